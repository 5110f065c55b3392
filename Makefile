# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is installed first; an unpinned torch would pull a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0

.PHONY: install demo test bench mutate clean

$(BIN)/robust: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_CPU)
	$(BIN)/pip install -e ".[test,lirpa]"
	# Optional extras that pin ancient torch versions: installed without their deps.
	$(BIN)/pip install --no-deps auto-lirpa==0.3 torchattacks==3.5.1
	touch $(BIN)/robust

install: $(BIN)/robust

demo: install
	$(BIN)/robust attack --model mnist-cnn --attack fgsm pgd --eps 0.1 0.2 0.3 --n 500

test: install
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -m "not slow"

# Mutation check of the engines' critical modules (not in CI: about 30 min on 2 cores).
mutate: install
	$(BIN)/python -c "import cosmic_ray" 2>/dev/null || $(BIN)/pip install "cosmic-ray==8.7.0"
	OMP_NUM_THREADS=2 $(BIN)/python tests/mutation/run.py $(TARGETS) $(if $(SAMPLE),--sample $(SAMPLE))

bench: install
	$(BIN)/python benchmarks/attack_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
