"""CROWN's patches mode equals the dense backward pass, and transposed convolutions equal autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustcli.certify.chain_bounds as cb
from robustcli.certify.conv_patches import conv_transpose_unpadded, patchable
from robustcli.certify.onnx_layers import ElementwiseAffine


def _nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    nets = {
        "stride2-pad1": nn.Sequential(
            nn.Conv2d(1, 6, 4, 2, 1), nn.ReLU(), nn.Conv2d(6, 8, 4, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)
        ),
        "bn-affine-dilation": nn.Sequential(
            ElementwiseAffine(torch.tensor(3.0), torch.tensor(-0.4)), nn.Conv2d(1, 4, 3, 1, 1), nn.BatchNorm2d(4),
            nn.ReLU(), nn.Conv2d(4, 5, 3, 2, 0), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 5, 3, 1, 2, dilation=2),
            nn.ReLU(), nn.Flatten(), nn.Linear(5 * 7 * 7, 4),
        ),
        "rect-kernel-groups-pixel-affine": nn.Sequential(
            ElementwiseAffine(torch.rand(1, 16, 16) + 0.5, torch.rand(1, 1, 16) - 0.5),
            nn.Conv2d(1, 4, (3, 5), (1, 2), (1, 2)), nn.ReLU(), nn.Conv2d(4, 6, 3, 1, 1, groups=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(6 * 16 * 8, 3),
        ),
        # Two convolutions with no elementwise map between them (a bias-free one: an average
        # pooling written as a depthwise convolution): entries at padding positions must not be
        # carried back onto the map by the second transposition.
        "consecutive-bias-free-convs": nn.Sequential(
            nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 1, 1, groups=4, bias=False),
            nn.Conv2d(4, 5, 3, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 16 * 16, 3),
        ),
    }  # fmt: skip
    nets["consecutive-bias-free-convs"][2].weight.data.fill_(1 / 9)
    for net in nets.values():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
        net.eval()
    return nets


def _bounds(chain, lo, hi, ball, use_patches: bool, monkeypatch):
    if not use_patches:
        monkeypatch.setattr(cb, "patchable", lambda *a, **k: False)
    out = cb.crown_intermediate(chain, lo, hi, ball=ball)
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("name", list(_nets()))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_patches_equal_dense_rows(name, norm, monkeypatch):
    net = _nets()[name]
    side = 16
    chain = cb.Chain.of(net, (1, side, side))
    assert patchable(chain.blocks[:2], chain.in_shapes[:2], chain.out_shapes[:2])  # the patches path runs
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, side, side, generator=g, dtype=torch.float64)
    eps = 0.05 if norm == "linf" else 0.8
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    ball = None if norm == "linf" else (x, torch.full((3,), eps, dtype=torch.float64))
    patched = _bounds(chain, lo, hi, ball, True, monkeypatch)
    dense = _bounds(chain, lo, hi, ball, False, monkeypatch)
    gained = 0.0
    ibp = cb.ibp_intermediate(chain, lo, hi)
    for (pl, pu), (dl, du), (il, _) in zip(patched, dense, ibp):
        assert torch.allclose(pl, dl, atol=1e-10) and torch.allclose(pu, du, atol=1e-10)
        gained = max(gained, float((pl - il).max()))
    assert gained > 1e-3  # CROWN tightened something, so the comparison is not IBP against IBP


def test_patches_not_used_where_they_do_not_pay():
    big = nn.Sequential(nn.Conv2d(1, 2, 5, 1, 2), nn.ReLU(), nn.Conv2d(2, 2, 5, 1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2))
    chain = cb.Chain.of(big, (1, 6, 6))  # a second-layer neuron reads a 9x9 window of a 6x6 input
    assert not patchable(chain.blocks[:2], chain.in_shapes[:2], chain.out_shapes[:2])
    mlp = cb.Chain.of(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 2)), (1, 4, 4))
    assert not patchable(mlp.blocks[:1], mlp.in_shapes[:1], mlp.out_shapes[:1])


@pytest.mark.parametrize(
    "cin,cout,k,s,p,d,side",
    [(3, 5, 3, 1, 1, 1, 9), (2, 4, 4, 2, 1, 1, 28), (2, 3, 3, 2, 0, 1, 10), (2, 3, 3, 2, 2, 2, 11),
     (1, 2, (3, 5), (1, 2), (1, 2), 1, 12), (2, 2, 5, 3, 1, 1, 13)],
)  # fmt: skip
def test_transposed_convolution_is_the_vector_jacobian_product(cin, cout, k, s, p, d, side):
    torch.manual_seed(0)
    m = nn.Conv2d(cin, cout, k, s, p, dilation=d).double()
    out_shape = m(torch.zeros(1, cin, side, side, dtype=torch.float64)).shape[1:]
    rows = torch.randn(4, *out_shape, dtype=torch.float64)
    x = torch.randn(4, cin, side, side, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(F.conv2d(x, m.weight, None, m.stride, m.padding, m.dilation), x, rows)
    assert torch.allclose(cb._conv_transpose(rows, m, (cin, side, side)), expected, atol=1e-12)
    # float32 takes other kernels on CPU (conv_transpose2d; a patch's dense matrix)
    got32 = cb._conv_transpose(rows.float(), m.float(), (cin, side, side))
    assert got32.dtype == torch.float32 and torch.allclose(got32.double(), expected, atol=1e-4)
    m32, a = m.float(), rows[:, :, :2, :2].float()
    size = tuple((n - 1) * st + dl * (kk - 1) + 1 for n, st, dl, kk in zip(a.shape[2:], m.stride, m.dilation, m.kernel_size))
    plain = conv_transpose_unpadded(a, m32, size)
    via_matrix = conv_transpose_unpadded(a, m32, size, cache={})
    assert plain.shape == via_matrix.shape == (4, cin, *size) and torch.allclose(plain, via_matrix, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_patches_equal_dense_rows_in_groups_of_points(dtype, monkeypatch):
    """Rows computed a few points at a time, each group with only its own unstable neurons, give
    the bounds of one pass over the whole batch."""
    net = _nets()["stride2-pad1"]
    chain = cb.Chain.of(net, (1, 16, 16), dtype)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(5, 1, 16, 16, generator=g, dtype=dtype)
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.2], dtype=dtype).view(-1, 1, 1, 1)  # very different unstable counts
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    whole = cb.crown_intermediate(chain, lo, hi)
    monkeypatch.setattr(cb, "_GROUP_ELEMENTS", 1)  # one point per group, one dense row per part
    monkeypatch.setattr(cb, "_PATCH_ROWS", 3)  # patch rows in parts of 3 neurons
    grouped = cb.crown_intermediate(chain, lo, hi)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for (wl, wu), (gl, gu) in zip(whole, grouped):
        assert torch.allclose(wl, gl, atol=tol) and torch.allclose(wu, gu, atol=tol)
