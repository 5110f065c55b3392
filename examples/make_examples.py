"""Writes the tiny sample files the README and docs use, so their command lines run as written.

    python examples/make_examples.py            # a few seconds on a CPU; rewrites examples/*

- `digits-mlp.pt2`          torch.export program of the MLP in my_model.py, trained on digits
- `digits-mlp.safetensors`  the same weights as a plain state dict (needs --arch my_model:make_net)
- `digits-mlp.onnx`         the same network as ONNX (single file, torch.onnx.export dynamo=False)
- `digits-test.npz`         100 test points of scikit-learn's 8x8 digits (arrays x, y)
- `prop.vnnlib`             a VNN-COMP robustness property: an Linf box of radius 0.03 around test point 0
- `prop_wide.vnnlib`        the same at radius 0.2 (large enough for an attack to break it)
- `instances.csv`           a two-instance VNN-COMP benchmark over the files above

Training is seeded and runs on one thread, so the files are the same on every run of the same
torch version (the test suite checks the committed ones load and agree with each other).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from my_model import make_net  # noqa: E402

from robustcli.data import load_dataset  # noqa: E402

EPS, WIDE_EPS = 0.03, 0.2


def train() -> torch.nn.Module:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train_set = load_dataset("digits", "train")
    model = make_net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        for idx in torch.randperm(len(train_set.y), generator=g).split(64):
            loss = torch.nn.functional.cross_entropy(model(train_set.x[idx]), train_set.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def vnnlib(x: torch.Tensor, label: int, eps: float, classes: int = 10) -> str:
    """Violated iff some other class's output is >= the label's somewhere in the box."""
    flat = x.flatten().tolist()
    lines = [f"; Linf box of radius {eps} around digits test point 0 (label {label}), clipped to [0, 1]"]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(flat))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(classes)]
    for i, v in enumerate(flat):
        lines += [f"(assert (<= X_{i} {min(v + eps, 1.0):.6f}))", f"(assert (>= X_{i} {max(v - eps, 0.0):.6f}))"]
    ors = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label)
    return "\n".join([*lines, f"(assert (or {ors}))"]) + "\n"


def main() -> None:
    from safetensors.torch import save_file

    model = train()
    test = load_dataset("digits", "test")
    x, y = test.x[:100], test.y[:100]
    acc = (model(x).argmax(1) == y).float().mean().item()
    np.savez(HERE / "digits-test.npz", x=x.numpy().astype(np.float32), y=y.numpy().astype(np.int64))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(HERE / "digits-mlp.safetensors"))
    example = torch.zeros(1, 1, 8, 8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(HERE / "digits-mlp.pt2"))
    torch.onnx.export(model, example, str(HERE / "digits-mlp.onnx"), dynamo=False,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    label = int(y[0])
    (HERE / "prop.vnnlib").write_text(vnnlib(x[0], label, EPS))
    (HERE / "prop_wide.vnnlib").write_text(vnnlib(x[0], label, WIDE_EPS))
    (HERE / "instances.csv").write_text("digits-mlp.onnx,prop.vnnlib,30\ndigits-mlp.onnx,prop_wide.vnnlib,30\n")
    print(f"wrote examples/ (test accuracy of the example model on 100 points: {acc:.2f})")


if __name__ == "__main__":
    main()
