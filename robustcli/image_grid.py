"""A picture of what an attack did: clean image, adversarial image and the perturbation, amplified.

One row per broken point (a sample of them), three panels each, titled with the true class and the
model's predictions on the clean and the adversarial input. The perturbation delta = x_adv - x is
shown as 0.5 + delta / (2 max|delta|) per image, so mid-grey is "unchanged" and the full grey range
is used however small the budget; the amplification factor 1 / (2 max|delta|) is printed in the panel
title, so a reader knows how much was magnified (the visualisation of Goodfellow et al. 2015,
Fig. 1, and Szegedy et al. 2014, Fig. 5, which show x, the magnified perturbation and x + delta).

Selection is deterministic: the broken points are taken in order of the smallest budget that broke
them (the most fragile first), spread evenly over the data set's indices within a budget, so the
same run draws the same picture.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustcli.attacks.base import eval_mode
from robustcli.attacks.evaluate import WORST_CASE, Evaluation, predict
from robustcli.attacks.registry import make_attack
from robustcli.core.files import atomic_path

SAMPLE_SIZE = 8


@dataclass
class BrokenSample:
    """A few attacked points with their clean and adversarial images and what the model said."""

    index: torch.Tensor  # long (K,): position in the evaluated data
    x: torch.Tensor  # (K, ...) clean images in [0, 1]
    x_adv: torch.Tensor  # (K, ...) adversarial images in [0, 1]
    y: torch.Tensor  # long (K,)
    pred_clean: torch.Tensor  # long (K,)
    pred_adv: torch.Tensor  # long (K,)
    label: list[str]  # per point: "attack norm eps"

    def __len__(self) -> int:
        return len(self.index)


def broken_sample(
    evaluation: Evaluation,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: torch.device,
    k: int = SAMPLE_SIZE,
) -> BrokenSample | None:
    """Up to k distinct broken points from an evaluation run with `keep_adversarials=True`.

    Returns None when no attack broke any point (or no adversarial examples were kept)."""
    rows = sorted(
        (o for o in evaluation.outcomes if o.attack != WORST_CASE),
        key=lambda o: o.eps,
    )
    chosen: dict[int, str] = {}
    for o in rows:
        key = f"{o.attack}/{o.norm}/{o.eps:g}"
        if key not in evaluation.adversarials:
            continue
        idx = [i for i in o.broken.nonzero().flatten().tolist() if i not in chosen]
        room = k - len(chosen)
        if room <= 0:
            break
        if len(idx) > room:  # evenly spread over the data set, not just its first points
            idx = [idx[round(j * (len(idx) - 1) / max(room - 1, 1))] for j in range(room)]
        for i in idx:
            chosen.setdefault(i, key)
    if not chosen:
        return None
    index = torch.tensor(list(chosen), dtype=torch.long)
    x_adv = torch.stack([evaluation.adversarials[key][i] for i, key in chosen.items()])
    return _sample(model, x, y, index, x_adv, [key.replace("/", " ") for key in chosen.values()], device)


def pgd_broken_sample(
    outcomes: list,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    steps: int,
    seed: int,
    device: torch.device,
    k: int = SAMPLE_SIZE,
) -> BrokenSample | None:
    """For `certify`: up to k points PGD broke (correct, not PGD-robust), smallest eps first.

    The certification engine keeps only per-point verdicts, so PGD runs again on these few points
    (same norm, eps and steps) to get images; a point this second run does not break is left out."""
    chosen: dict[int, float] = {}
    for o in sorted(outcomes, key=lambda o: o.eps):
        idx = [i for i in (o.correct & ~o.pgd_robust).nonzero().flatten().tolist() if i not in chosen]
        room = k - len(chosen)
        if room <= 0:
            break
        if len(idx) > room:
            idx = [idx[round(j * (len(idx) - 1) / max(room - 1, 1))] for j in range(room)]
        for i in idx:
            chosen.setdefault(i, float(o.eps))
    if not chosen:
        return None
    attack = make_attack("pgd" if norm == "linf" else "pgd-l2", steps=steps)
    keep, advs, labels = [], [], []
    for eps in sorted(set(chosen.values())):
        index = torch.tensor([i for i, e in chosen.items() if e == eps], dtype=torch.long)
        generator = torch.Generator(device=device).manual_seed(seed)
        with eval_mode(model):
            result = attack(model, x[index].to(device), y[index].to(device), eps, generator=generator)
        ok = result.success.cpu()
        keep += index[ok].tolist()
        advs.append(result.x_adv.detach().cpu()[ok])
        labels += [f"{attack.name} {norm} {eps:g}"] * int(ok.sum())
    if not keep:
        return None
    return _sample(model, x, y, torch.tensor(keep, dtype=torch.long), torch.cat(advs), labels, device)


def _sample(model, x, y, index: torch.Tensor, x_adv: torch.Tensor, labels: list[str], device) -> BrokenSample:
    x_clean = x[index]
    batch = max(len(index), 1)
    return BrokenSample(
        index=index,
        x=x_clean.cpu(),
        x_adv=x_adv.cpu(),
        y=y[index].cpu(),
        pred_clean=predict(model, x_clean, batch, device),
        pred_adv=predict(model, x_adv, batch, device),
        label=labels,
    )


def _as_image(t: torch.Tensor) -> np.ndarray:
    """(C, H, W), (H, W) or a flat square vector -> (H, W) or (H, W, 3) for imshow."""
    a = t.detach().cpu().float().numpy()
    if a.ndim == 1:
        side = math.isqrt(a.size)
        if side * side != a.size:
            return a.reshape(1, -1)  # not square: one strip
        a = a.reshape(side, side)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)
    return a


def grid_png(sample: BrokenSample, class_names: list[str] | None = None, title: str | None = None) -> bytes:
    """The grid as PNG bytes: rows = points; columns = clean, adversarial, amplified perturbation."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    def name(c: int) -> str:
        return class_names[c] if class_names and 0 <= c < len(class_names) else str(c)

    per_row = 2 if len(sample) > 1 else 1  # two points (six panels) side by side keeps the page short
    rows = math.ceil(len(sample) / per_row)
    fig, axes = plt.subplots(
        rows, 3 * per_row, figsize=(6.6 * per_row, 2.6 * rows + (0.5 if title else 0)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for r in range(len(sample)):
        clean, adv = _as_image(sample.x[r]), _as_image(sample.x_adv[r])
        delta = adv - clean
        peak = float(np.abs(delta).max())
        amplified = 0.5 + delta / (2 * peak) if peak > 0 else np.full_like(delta, 0.5)
        gray = clean.ndim == 2
        panels = (
            (clean, f"#{int(sample.index[r])} true {name(int(sample.y[r]))}\npred {name(int(sample.pred_clean[r]))}"),
            (adv, f"{sample.label[r]}\npred {name(int(sample.pred_adv[r]))}"),
            (amplified, f"perturbation x{1 / (2 * peak) if peak > 0 else 0:.3g}\nmax |delta| {peak:.3g}"),
        )
        row, col = divmod(r, per_row)
        for ax, (img, text) in zip(axes[row, 3 * col : 3 * col + 3], panels):
            ax.axis("on")
            ax.imshow(np.clip(img, 0, 1), cmap="gray" if gray else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(text, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def message_png(text: str) -> bytes:
    """A small PNG saying why there is no grid, so `--png PATH` always leaves a picture a reader understands."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(5, 1))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_png(path: str | Path, png: bytes) -> None:
    """Atomically: the file is complete or absent."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
