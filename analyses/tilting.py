"""Boundary tilting (Tanay & Griffin 2016, "A Boundary Tilting Perspective on the Phenomenon of
Adversarial Examples", sections 3-4).

Setting (section 3): two classes I and J of images in R^d, a linear classifier
C(x) = sign(w . x + b) (J when positive), and the nearest-centroid classifier C_NC whose normal is
the difference of the class means, w_NC = m_J - m_I.

* Deviation angle theta(C): the angle between w and w_NC.
* Adversarial distance: the signed distance of a point to C's boundary, s(x) = t (w . x + b) /
  ||w||_2 (t = +1 for J, -1 for I; positive when correctly classified), averaged over each class
  and then over the two classes: d_adv(C) = (E_I[s] + E_J[s]) / 2. The bias cancels, so
  d_adv(C) = w . (m_J - m_I) / (2 ||w||) = cos(theta) ||m_J - m_I|| / 2: C_NC maximises it.
* Adversarial strength: S(C) = d_adv(C_NC) / d_adv(C) = 1 / cos(theta) >= 1, with equality for
  the nearest-centroid classifier itself. Strength grows without bound as the boundary tilts
  towards the data (theta -> 90 degrees) while accuracy can stay the same (section 4: "boundary
  tilting"); L2 regularisation pulls w back towards w_NC.

Choices the paper leaves open, made here: the class means (and so w_NC) come from the training
split; strength is reported both from the definition above on the training split (which equals
1 / cos(theta) exactly) and empirically on held-out points as the ratio of median unsigned
L2 distances to the boundary, C_NC's over C's, over the points each classifies correctly (for a
linear classifier and an L2 attack that distance is the smallest adversarial perturbation,
ignoring the [0, 1] box). The linear classifier is L2-regularised logistic regression: mean
binary cross-entropy + (weight_decay / 2) ||w||^2 (bias not decayed), minimised by full-batch
L-BFGS from a seeded small random start. As weight_decay grows, the minimiser's w tends to the
direction of m_J - m_I (the gradient at w = 0 with the optimal bias), i.e. to C_NC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.attacks.base import eval_mode, input_gradient


@dataclass
class LinearClassifier:
    """sign(w . x + b) on flattened inputs: positive means class J."""

    w: torch.Tensor  # (d,)
    b: float

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).to(self.w.dtype) @ self.w + self.b

    def accuracy(self, x: torch.Tensor, t: torch.Tensor) -> float:
        """t in {-1, +1}."""
        return ((self.scores(x) > 0) == (t > 0)).double().mean().item()

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Unsigned L2 distance of each point to the boundary."""
        return self.scores(x).abs() / self.w.norm()


def signs(y: torch.Tensor, class_i: int, class_j: int) -> torch.Tensor:
    """+1 for class J, -1 for class I (other labels are an error)."""
    if not bool(((y == class_i) | (y == class_j)).all()):
        raise ValueError("labels outside the two classes")
    return torch.where(y == class_j, 1.0, -1.0)


def nearest_centroid(x: torch.Tensor, t: torch.Tensor) -> LinearClassifier:
    """C_NC: normal m_J - m_I, boundary through the midpoint of the two means."""
    flat = x.flatten(1).double()
    m_i, m_j = flat[t < 0].mean(0), flat[t > 0].mean(0)
    w = m_j - m_i
    return LinearClassifier(w, float(-w @ (m_i + m_j) / 2))


def _angles(w: torch.Tensor, w_nc: torch.Tensor) -> torch.Tensor:
    """Angles in degrees between the rows of w (M, d) and w_nc (d,).

    atan2(orthogonal part, parallel part) rather than acos(cos): acos loses half the digits near 0.
    """
    u = w_nc.double() / w_nc.double().norm().clamp_min(1e-300)
    w = w.double()
    parallel = w @ u
    orthogonal = (w - parallel[:, None] * u[None, :]).norm(dim=1)
    return torch.rad2deg(torch.atan2(orthogonal, parallel))


def deviation_angle(w: torch.Tensor, w_nc: torch.Tensor) -> float:
    """Angle in degrees between a classifier's normal and the nearest-centroid normal (section 3)."""
    return float(_angles(w.flatten()[None, :], w_nc.flatten())[0])


def adversarial_distance(c: LinearClassifier, x: torch.Tensor, t: torch.Tensor) -> float:
    """d_adv(C): mean signed distance to the boundary per class, averaged over the two classes."""
    s = t.double() * c.scores(x).double() / c.w.double().norm()
    return 0.5 * (s[t < 0].mean().item() + s[t > 0].mean().item())


def adversarial_strength(c: LinearClassifier, x: torch.Tensor, t: torch.Tensor) -> float:
    """S(C) = d_adv(C_NC) / d_adv(C) on (x, t); equals 1 / cos(theta) with C_NC from the same data.

    inf when d_adv(C) <= 0 (a boundary at or beyond 90 degrees from C_NC).
    """
    d = adversarial_distance(c, x, t)
    d_nc = adversarial_distance(nearest_centroid(x, t), x, t)
    return d_nc / d if d > 0 else math.inf


def train_logistic(
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    weight_decay: float,
    seed: int,
    max_iter: int = 500,
) -> LinearClassifier:
    """L2-regularised logistic regression by full-batch L-BFGS (objective in the module docstring).

    With weight_decay = 0 on separable data the minimiser does not exist (||w|| grows without
    bound); the result is then the iterate after `max_iter` iterations, which is what an
    unregularised training run returns too.
    """
    if weight_decay < 0:
        raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
    flat = x.flatten(1).double()
    target = (t > 0).double()
    gen = torch.Generator(device=flat.device).manual_seed(seed)
    w = (1e-3 * torch.randn(flat.shape[1], generator=gen, device=flat.device, dtype=flat.dtype)).requires_grad_(True)
    b = torch.zeros((), device=flat.device, dtype=flat.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(flat @ w + b, target) + 0.5 * weight_decay * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearClassifier(w.detach(), float(b.detach()))


@dataclass
class TiltingPoint:
    weight_decay: float | None  # None for the nearest-centroid reference row
    angle_deg: float
    strength: float  # d_adv(C_NC) / d_adv(C) on the training split
    train_accuracy: float
    test_accuracy: float
    median_distance: float  # median L2 distance of correctly classified test points to the boundary
    empirical_strength: float  # median distance of C_NC over C's, on test points
    weight_norm: float

    def summary(self) -> dict:
        return {
            "classifier": "nearest-centroid" if self.weight_decay is None else "logistic",
            "weight_decay": self.weight_decay,
            "angle_deg": self.angle_deg,
            "strength": self.strength,
            "one_over_cos": 1.0 / math.cos(math.radians(self.angle_deg)) if self.angle_deg < 90 else math.inf,
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "median_distance": self.median_distance,
            "empirical_strength": self.empirical_strength,
            "weight_norm": self.weight_norm,
        }


def _median_correct_distance(c: LinearClassifier, x: torch.Tensor, t: torch.Tensor) -> float:
    ok = (c.scores(x) > 0) == (t > 0)
    return c.distances(x[ok]).median().item() if bool(ok.any()) else math.nan


def describe(
    c: LinearClassifier,
    weight_decay: float | None,
    nc: LinearClassifier,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
) -> TiltingPoint:
    dist = _median_correct_distance(c, *test)
    dist_nc = _median_correct_distance(nc, *test)
    return TiltingPoint(
        weight_decay,
        deviation_angle(c.w, nc.w),
        adversarial_strength(c, *train),
        c.accuracy(*train),
        c.accuracy(*test),
        dist,
        dist_nc / dist if dist > 0 else math.inf,
        c.w.norm().item(),
    )


def tilting_sweep(
    x_train: torch.Tensor,
    t_train: torch.Tensor,
    x_test: torch.Tensor,
    t_test: torch.Tensor,
    weight_decays: Sequence[float],
    *,
    seed: int,
    max_iter: int = 500,
    on_fit: Callable[[int], None] | None = None,
) -> list[TiltingPoint]:
    """The nearest-centroid reference, then one logistic regression per weight decay."""
    nc = nearest_centroid(x_train, t_train)
    train, test = (x_train, t_train), (x_test, t_test)
    rows = [describe(nc, None, nc, train, test)]
    for wd in weight_decays:
        rows.append(describe(train_logistic(x_train, t_train, weight_decay=wd, seed=seed, max_iter=max_iter), wd, nc, train, test))
        if on_fit is not None:
            on_fit(1)
    return rows


@dataclass
class LocalTilting:
    angle_deg: torch.Tensor  # (M,) per point
    strength: torch.Tensor  # (M,) 1 / cos(angle), inf past 90 degrees
    distance: torch.Tensor  # (M,) first-order L2 distance |Z_J - Z_I| / ||grad (Z_J - Z_I)||
    correct: torch.Tensor  # (M,) bool: the pair's logit difference has the label's sign


def local_tilting(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    class_i: int,
    class_j: int,
    w_nc: torch.Tensor,
    *,
    batch_size: int = 256,
) -> LocalTilting:
    """Deviation angle of the model's local linear map at each point (section 3 applied locally).

    At x the model's two-class decision function Z_J(x) - Z_I(x) is replaced by its first-order
    Taylor expansion, whose normal is grad_x (Z_J - Z_I); its angle to w_NC and 1 / cos of it
    are the local deviation angle and strength.
    """
    device = w_nc.device
    angles, dists, correct = [], [], []
    w_nc = w_nc.double()
    with eval_mode(model), torch.enable_grad():
        for start in range(0, len(t), batch_size):
            xb = x[start : start + batch_size].to(device)
            logits, grad = input_gradient(model, xb, lambda z: z[:, class_j] - z[:, class_i])
            g = grad.flatten(1).double()
            angles.append(_angles(g, w_nc))
            diff = (logits[:, class_j] - logits[:, class_i]).double()
            dists.append(diff.abs() / g.norm(dim=1).clamp_min(1e-300))
            correct.append((diff > 0) == (t[start : start + batch_size].to(device) > 0))
    angle = torch.cat(angles)
    cos = torch.cos(torch.deg2rad(angle))
    strength = torch.where(cos > 0, 1 / cos.clamp_min(1e-300), torch.full_like(cos, math.inf))
    return LocalTilting(angle, strength, torch.cat(dists), torch.cat(correct))
