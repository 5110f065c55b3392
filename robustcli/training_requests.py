"""Requests of the trainers: what one `train`, `distill`, `train-moe` or `train-ibp` run is asked to
do, with its defaults and validation in one place (the pattern of `robustcli.requests`).

A command parses its flags, builds its request and dispatches. The request validates itself when
built and raises `OptionError`, which names the option by its long flag, so a bad value or output
path fails in one line before any data is loaded or any epoch runs. The commands' Click options
take their defaults from the request classes, so a default is written once. Fields are named like
the long flags with underscores (`n_train` is `--n-train`, `num_points` is `--num-points`/`--n`,
`html` is `--html`).

The eps warm-up of PGD-AT, TRADES and AdvMoE ramps eps linearly from 0 over the first epochs
(the ramp of Gowal et al. 2018, sec. 4, which keeps early adversarial training from collapsing).
Its default, 2 epochs, scales down with `--epochs`: it never takes every epoch, so a short run
still ends at the full eps (`--epochs 2` ramps over 1, `--epochs 1` has no ramp). An explicit
`--warmup` that leaves no epoch at the full eps is refused with the fix rather than shortened,
because the user asked for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from robustcli.archs import ARCHS
from robustcli.data import BUILTIN_DATASETS, dataset_family
from robustcli.defenses.adversarial import DEFENSES, AdversarialConfig
from robustcli.defenses.advmoe import MODES, MoEConfig
from robustcli.defenses.moe import DENSE_TWIN
from robustcli.requests import OptionError, check_at_least, check_eps
from robustcli.training_report import check_html

DEFAULT_WARMUP = 2  # epochs of eps ramp when --warmup is not given (and --epochs leaves room)
IBP_DEFAULT_ARCH = {"mnist": "mnist-cnn-bn", "digits": "digits-mlp-bn"}  # BatchNorm: the short recipe needs it
MOE_WIDTH = 16  # channels of the MoE-CNN's first MoE layer (the second has 32); experts split them evenly


def check_positive(**values: float | None) -> None:
    """Each given value (None: not set) is > 0; keys are option names with underscores."""
    for name, v in values.items():
        if v is not None and not v > 0:
            raise OptionError(name.replace("_", "-"), f"must be > 0, got {v}")


def warmup_epochs(warmup: int | None, epochs: int) -> int:
    """`--warmup`, or the default: 2 epochs, but never all of them. An explicit value that leaves no
    epoch at the full eps is refused with the fix."""
    if warmup is None:
        return max(0, min(DEFAULT_WARMUP, epochs - 1))
    check_at_least(0, warmup=warmup)
    if 0 < warmup >= epochs:
        raise OptionError("warmup", f"{warmup} leaves no epoch at the full eps; use fewer warmup epochs or more --epochs")
    return warmup


def check_out(out: str) -> Path:
    """The trained model goes to a .safetensors file in an existing folder."""
    path = Path(out)
    if path.suffix != ".safetensors":
        raise OptionError("out", f"{out}: the trained model is saved as safetensors; use a .safetensors file name")
    if not path.parent.exists():
        raise OptionError("out", f"{out}: folder {path.parent} does not exist")
    return path


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """What every trainer takes: data, the schedule and optimiser, the seed and the outputs.

    Subclasses add their options and checks in `check_options`; the output paths are checked last,
    after every value."""

    data: str
    out: str
    test_data: str | None = None
    n_train: int | None = None
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    resume: bool = False
    html: str | None = None

    def __post_init__(self) -> None:
        check_at_least(1, epochs=self.epochs, batch_size=self.batch_size, n_train=self.n_train)
        check_positive(lr=self.lr)
        self.check_options()
        check_out(self.out)
        check_html(self.html)

    def check_options(self) -> None:
        """The trainer's own options (none here)."""

    @property
    def out_path(self) -> Path:
        return Path(self.out)


@dataclass(frozen=True, kw_only=True)
class AdversarialTrainRequest(TrainRequest):
    """`robust train`: natural, PGD-AT, TRADES or Gaussian-augmentation training, then a PGD check."""

    defense: str = "pgd-at"
    arch: str | None = None
    eps: float = 0.3
    attack_steps: int = 10
    beta: float = 6.0
    warmup: int | None = None
    sigma: float = 0.25
    eval_steps: int = 40
    num_points: int | None = None

    def check_options(self) -> None:
        if self.defense not in DEFENSES:
            raise OptionError("defense", f"{self.defense!r} is not one of {', '.join(DEFENSES)}")
        check_at_least(1, attack_steps=self.attack_steps, eval_steps=self.eval_steps, num_points=self.num_points)
        check_eps((self.eps,), "linf")
        check_at_least(0, beta=self.beta)
        if self.defense == "gaussian" and not (math.isfinite(self.sigma) and self.sigma > 0):
            raise OptionError(
                "sigma", f"must be > 0 (the std of the training noise in [0, 1] pixel units), got {self.sigma}"
            )
        if self.ramps:
            warmup_epochs(self.warmup, self.epochs)  # an explicit --warmup with no epoch at the full eps fails

    @property
    def ramps(self) -> bool:
        """Only PGD-AT and TRADES ramp eps (natural and Gaussian training have no eps)."""
        return self.defense in ("pgd-at", "trades")

    @property
    def warmup_epochs(self) -> int:
        return warmup_epochs(self.warmup, self.epochs) if self.ramps else 0

    def config(self) -> AdversarialConfig:
        return AdversarialConfig(
            defense=self.defense, eps=self.eps, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            attack_steps=self.attack_steps, beta=self.beta, warmup_epochs=self.warmup_epochs, seed=self.seed,
            sigma=self.sigma,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DistillRequest(TrainRequest):
    """`robust distill`: teacher (or `--teacher`) and student at temperature T; `--evaluate` attacks them."""

    temperature: float = 100.0
    teacher: str | None = None
    arch: str | None = None
    evaluate: bool = False
    eval_eps: float = 0.3
    num_points: int = 100

    def check_options(self) -> None:
        check_positive(temperature=self.temperature)
        check_at_least(1, num_points=self.num_points)
        check_eps((self.eval_eps,), "linf", "eval-eps")


@dataclass(frozen=True, kw_only=True)
class MoETrainRequest(TrainRequest):
    """`robust train-moe`: MoE-CNNs in one or more modes, and the dense AT CNN of the same width."""

    mode: tuple[str, ...] = ()
    experts: int = 4
    top_k: int = 2
    eps: float = 0.3
    attack_steps: int = 2
    beta: float = 6.0
    alpha: float = 6.0
    warmup: int | None = None
    dense: bool = True
    eval_steps: int = 40
    num_points: int | None = None

    def check_options(self) -> None:
        object.__setattr__(self, "mode", tuple(dict.fromkeys(self.mode)))
        if unknown := [m for m in self.mode if m not in MODES]:
            raise OptionError("mode", f"{unknown[0]!r} is not one of {', '.join(MODES)}")
        check_at_least(1, attack_steps=self.attack_steps, eval_steps=self.eval_steps, num_points=self.num_points)
        if self.family not in DENSE_TWIN:
            raise OptionError(
                "data", f"{self.data}: train-moe builds its MoE-CNN for the bundled data ({', '.join(DENSE_TWIN)})"
            )
        check_at_least(1, experts=self.experts)
        if not 1 <= self.top_k <= self.experts:
            raise OptionError("top-k", f"must lie in 1..--experts ({self.experts}), got {self.top_k}")
        if MOE_WIDTH % self.experts:
            raise OptionError(
                "experts", f"{self.experts} does not divide the layers' 16 and 32 channels; use 1, 2, 4, 8 or 16"
            )
        check_eps((self.eps,), "linf")
        check_at_least(0, beta=self.beta, alpha=self.alpha)
        if self.ramps:
            warmup_epochs(self.warmup, self.epochs)  # an explicit --warmup with no epoch at the full eps fails

    @property
    def family(self) -> str:
        """The bundled data set the MoE-CNN is built for (mnist-5k builds the MNIST one)."""
        return dataset_family(self.data)

    @property
    def modes(self) -> tuple[str, ...]:
        return self.mode or ("advmoe", "at")

    @property
    def ramps(self) -> bool:
        """Some model of the run trains adversarially (every mode but natural, and the dense twin)."""
        return self.modes != ("natural",) or self.dense

    @property
    def warmup_epochs(self) -> int:
        """Epochs of eps ramp, shared by every adversarially trained model of the run."""
        return warmup_epochs(self.warmup, self.epochs) if self.ramps else 0

    def config(self, name: str) -> AdversarialConfig | MoEConfig:
        """The engine config of one model of the plan: a mode, or `dense-at` (PGD-AT of the dense twin)."""
        if name == "dense-at":
            return AdversarialConfig(
                defense="pgd-at", eps=self.eps, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                attack_steps=self.attack_steps, warmup_epochs=self.warmup_epochs, seed=self.seed,
            )  # fmt: skip
        return MoEConfig(
            mode=name, eps=self.eps, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            attack_steps=self.attack_steps, beta=self.beta, alpha=self.alpha,
            warmup_epochs=0 if name == "natural" else self.warmup_epochs, seed=self.seed,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class IBPTrainRequest(TrainRequest):
    """`robust train-ibp`: certified training with interval bounds (Shi et al. 2021's recipe by default).

    Options left as None take the recipe's value (`certify.training.recipe_config`), which scales the
    start, warm-up and lr milestones with `--epochs`."""

    data: str = "mnist"
    epochs: int = 30
    lr: float = 5e-4
    batch_size: int = 128
    eps: float
    norm: str = "linf"
    arch: str | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    recipe: str = "short"
    method: str = "ibp"
    init: str | None = None
    start: int | None = None
    warmup: int | None = None
    lr_decay: float = 0.2
    lr_milestones: tuple[int, ...] = ()
    grad_clip: float = 10.0
    regularize: bool | None = None
    reg_lambda: float = 0.5
    tau: float = 0.5
    kappa: float = 0.0
    mix_natural: bool = False
    holdout: int = 256
    num_points: int | None = None
    pgd_steps: int = 40

    def check_options(self) -> None:
        for name, values in (("mean", self.mean), ("std", self.std), ("lr_milestones", self.lr_milestones)):
            object.__setattr__(self, name, tuple(values))
        for name, value, allowed in (
            ("norm", self.norm, ("linf", "l2")), ("recipe", self.recipe, ("short", "vanilla")),
            ("method", self.method, ("ibp", "crown-ibp")), ("init", self.init, (None, "ibp", "default")),
        ):  # fmt: skip
            if value not in allowed:
                raise OptionError(name, f"{value!r} is not one of {', '.join(a for a in allowed if a)}")
        check_eps((self.eps,), self.norm)
        check_at_least(1, pgd_steps=self.pgd_steps, num_points=self.num_points)
        check_at_least(0, holdout=self.holdout, start=self.start, warmup=self.warmup)
        check_at_least(2, n_train=self.n_train)
        if not 0 < self.lr_decay <= 1:
            raise OptionError("lr-decay", f"must lie in (0, 1], got {self.lr_decay}")
        check_positive(tau=self.tau)
        if not 0 <= self.kappa <= 1:
            raise OptionError("kappa", f"must lie in [0, 1], got {self.kappa}")
        check_at_least(0, grad_clip=self.grad_clip)
        if self.architecture is None:
            raise OptionError("data", f"{self.data} has no default architecture; pass --arch NAME or package.module:factory")
        arch = self.architecture
        if self.data in BUILTIN_DATASETS and arch in ARCHS and ARCHS[arch].dataset != dataset_family(self.data):
            raise OptionError("arch", f"{arch} is built for {ARCHS[arch].dataset}, not {self.data}; pick an arch for {self.data}")

    @property
    def architecture(self) -> str | None:
        """--arch, or the bundled data's BatchNorm default."""
        return self.arch or IBP_DEFAULT_ARCH.get(dataset_family(self.data))

    def check_dependencies(self) -> None:
        """Before any work: CROWN-IBP needs auto_LiRPA (exit 2 with the install hint when missing)."""
        if self.method == "crown-ibp":
            from robustcli.certify.lirpa import auto_lirpa

            auto_lirpa("crown-ibp")

    def config(self):  # -> certify.training.IBPTrainConfig (imported on use: it loads the bound code)
        from robustcli.certify.training import recipe_config

        return recipe_config(
            self.recipe, self.eps, self.epochs, start=self.start, warmup=self.warmup,
            lr_milestones=self.lr_milestones or None, norm=self.norm, method=self.method, init=self.init,
            regularize=self.regularize, reg_lambda=self.reg_lambda, tau=self.tau, kappa=self.kappa,
            mix_natural=self.mix_natural, lr=self.lr, lr_decay=self.lr_decay, grad_clip=self.grad_clip,
            batch_size=self.batch_size, seed=self.seed,
        )  # fmt: skip
