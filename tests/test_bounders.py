"""Every registered bounder on every input set: sampled and PGD-attacked points inside the set are
never below a certified bound; native CROWN agrees with auto_LiRPA's where both run; a user's CNN
written with F.relu and x.view bounds the same from a module, .pt2, TorchScript and ONNX."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certify_nets import UserDigitsCNN, model_files, model_formats, pgd_min_spec, random_cnn, random_mlp, sample_ball, spec_values
from robustcli.certify.bounders import METHODS, InputSet, build_bounder
from robustcli.certify.lirpa import lirpa_available
from robustcli.certify.spec import margin_spec

NATIVE = [m for m, info in METHODS.items() if not info.needs_lirpa]
LIRPA = [m for m, info in METHODS.items() if info.needs_lirpa]
NETS = [("mlp", 3, True, False), ("cnn", 3, True, False), ("cnn", 2, False, True)]  # kind, depth, bn, residual


def _net(kind, depth, bn, residual, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        return random_mlp(depth, bn, seed), torch.rand(4, 1, 4, 4, generator=g)
    return random_cnn(depth, bn, seed, residual=residual), torch.rand(4, 1, 8, 8, generator=g)


def _check_ball(method, model, x, eps, norm):
    spec = margin_spec(model(x).argmax(1), 5)
    low = build_bounder(method, model, x[:2], alpha_iterations=4).lower(InputSet.ball(x, eps, norm), spec)
    g = torch.Generator().manual_seed(1)
    sampled = torch.stack([spec_values(model, p, spec) for p in sample_ball(x, eps, norm, 200, g, corners=False)])
    corners = torch.stack([spec_values(model, p, spec) for p in sample_ball(x, eps, norm, 50, g, corners=True)])
    attacked = pgd_min_spec(model, x, spec, eps, norm, steps=30, g=g)
    empirical = torch.minimum(torch.minimum(sampled.min(0).values, corners.min(0).values), attacked)
    tol = 1e-5 + 1e-5 * empirical.abs()
    assert bool((low <= empirical + tol).all()), f"{method} {norm}: bound above a point in the set"
    return low


@pytest.mark.parametrize("kind,depth,bn,residual", NETS)
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.4)])
@pytest.mark.parametrize("method", NATIVE)
def test_native_bounders_are_sound_on_balls(method, kind, depth, bn, residual, norm, eps):
    model, x = _net(kind, depth, bn, residual, 3 * depth + bn)
    _check_ball(method, model, x, eps, norm)


@pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")
@pytest.mark.parametrize("method", LIRPA)
def test_lirpa_bounders_are_sound_on_balls(method):
    model, x = _net("cnn", 3, True, False, 5)
    _check_ball(method, model, x, 0.05, "linf")


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "alpha-crown"])
def test_native_bounders_are_sound_on_boxes(method):
    """A per-element box (as VNNLIB gives), with an offset d: never above the sampled minimum."""
    model, x = _net("cnn", 3, True, False, 11)
    g = torch.Generator().manual_seed(2)
    width = 0.1 * torch.rand(x.shape, generator=g)
    lo, hi = (x - width).clamp(0, 1), (x + width).clamp(0, 1)
    C = torch.randn(len(x), 3, 5, generator=g)
    d = torch.randn(len(x), 3, generator=g)
    low = build_bounder(method, model, x[:2], alpha_iterations=4).lower(InputSet.box(lo, hi), C, d)
    pts = lo + (hi - lo) * torch.rand(300, *x.shape, generator=g)
    pts[:40] = torch.where(torch.rand(40, *x.shape, generator=g) < 0.5, lo, hi)
    with torch.no_grad():
        vals = torch.stack([torch.einsum("nsk,nk->ns", C, model(p)) + d for p in pts])
    assert bool((low <= vals.min(0).values + 1e-5).all())


def test_crown_is_tighter_than_ibp_and_alpha_no_looser_than_crown():
    model, x = _net("cnn", 3, False, False, 4)
    spec = margin_spec(model(x).argmax(1), 5)
    s = InputSet.ball(x, 0.03, "linf")
    ibp, crown, alpha = (build_bounder(m, model, x[:2], alpha_iterations=10).lower(s, spec)
                         for m in ("ibp", "crown", "alpha-crown"))
    assert bool((crown >= ibp - 1e-6).all()) and bool((crown > ibp + 1e-4).any())
    assert bool((alpha >= crown - 1e-6).all())


@pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")
@pytest.mark.parametrize("kind,depth,bn", [("mlp", 3, True), ("cnn", 3, True)])
@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.3)])
def test_native_crown_equals_auto_lirpa_crown(kind, depth, bn, norm, eps):
    """Same relaxation (adaptive lower slope): equal bounds to float32 rounding, or native tighter
    (native also intersects intermediate bounds with IBP and, for L2, with the [0, 1] box)."""
    model, x = _net(kind, depth, bn, False, 17 + depth)
    spec = margin_spec(model(x).argmax(1), 5)
    s = InputSet.ball(x, eps, norm)
    native = build_bounder("crown", model, x[:2]).lower(s, spec)
    lirpa = build_bounder("lirpa-crown", model, x[:2]).lower(s, spec)
    assert bool((native >= lirpa - 1e-5).all())
    if norm == "linf":  # the same relaxation: at most float32 rounding and the IBP intersection apart
        assert float((native - lirpa).abs().max()) < 1e-3 * (1 + float(lirpa.abs().max()))


UserCNN = UserDigitsCNN


def _formats(tmp_path):
    torch.manual_seed(0)
    model = UserCNN().eval()
    x = torch.rand(3, 1, 8, 8)
    return model, x, model_formats(tmp_path, model, x)


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_user_cnn_bounds_the_same_from_every_format(tmp_path, method):
    model, x, forms = _formats(tmp_path)
    spec = margin_spec(model(x).argmax(1), 10)
    s = InputSet.ball(x, 0.02, "linf")
    lows = {name: build_bounder(method, m, x[:2]).lower(s, spec) for name, m in forms.items()}
    for name, low in lows.items():
        torch.testing.assert_close(low, lows["module"], atol=1e-5, rtol=1e-5, msg=f"{name} differs")
    empirical = pgd_min_spec(model, x, spec, 0.02, "linf", steps=20, g=torch.Generator().manual_seed(0))
    assert bool((lows["module"] <= empirical + 1e-5).all())


def test_unsupported_operation_is_named_in_one_line():
    from robustcli.certify.trace import UnsupportedOperation

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.sin(x.flatten(1)))

    for method in ("ibp", "crown"):
        with pytest.raises(UnsupportedOperation) as e:
            build_bounder(method, Odd().eval(), torch.rand(2, 4))
        msg = str(e.value)
        assert "aten.sin" in msg and "\n" not in msg
        assert "--method crown" not in msg and "--method ibp" not in msg  # never a method that fails too


@pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")
@pytest.mark.parametrize("op,lirpa_bounds", [(torch.sin, True), (torch.exp, True), (lambda t: t * torch.sigmoid(t), True),
                                             (torch.erf, False), (lambda t: torch.sqrt(torch.exp(t)), False),
                                             (lambda t: torch.sin(t.abs() + 0.1), False)])
def test_a_refusal_points_to_auto_lirpa_only_where_it_bounds_the_operation(op, lirpa_bounds):
    """The native refusal names auto_LiRPA only when its CROWN bounds the model (then soundly, below
    sampled points), and says it cannot either when it fails there too: on erf, on the square root
    it relaxes unsoundly, and on sin(|z| + 0.1), whose graph it cannot read although it bounds sin."""
    from robustcli.core.errors import InputError
    from robustcli.certify.trace import UnsupportedOperation

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(op(self.a(x.flatten(1))))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.rand(4, 6)
    with pytest.raises(UnsupportedOperation) as e:
        build_bounder("crown", model, x[:2])
    msg = str(e.value)
    spec = margin_spec(torch.tensor([0, 1, 2, 0]), 3)
    if lirpa_bounds:
        assert "lirpa-crown (auto_LiRPA) bounds it" in msg
        low = build_bounder("lirpa-crown", model, x[:2]).lower(InputSet.ball(x, 0.02, "linf"), spec)
        for pts in sample_ball(x, 0.02, "linf", 200, torch.Generator().manual_seed(1), corners=False):
            assert bool((low <= spec_values(model, pts, spec) + 1e-5).all())
    else:
        assert "cannot bound it either" in msg and "--method lirpa" not in msg
        with pytest.raises(InputError, match="native methods cannot bound it either|not sound"):
            build_bounder("lirpa-crown", model, x[:2]).lower(InputSet.ball(x, 0.02, "linf"), spec)


def test_user_cnn_certifies_from_every_file_format_at_the_cli(tmp_path, run_cli):
    """`robust certify --model my.pt` on the model people write, saved the four usual ways."""
    import json

    from certify_nets import user_digits_cnn

    model = user_digits_cnn().eval()
    x = torch.rand(2, 1, 8, 8)
    files = model_files(tmp_path, model, x, "certify_nets:user_digits_cnn")
    margins = {}
    for name, args in files.items():
        out = tmp_path / f"{name}.json"
        r = run_cli("certify", *args, "--data", "digits", "--n", "8", "--eps", "0.01", "--method", "ibp", "crown",
                    "--pgd-steps", "2", "--json", out)
        assert r.exit_code == 0, f"{name}: {r.output}"
        margins[name] = [row["mean_margin_lower_bound"] for row in json.loads(out.read_text())["results"]]
    for name, m in margins.items():
        assert m == pytest.approx(margins["state"], abs=1e-4), name


@pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")
def test_auto_lirpa_square_root_relaxation_is_refused_because_it_is_unsound():
    """auto_LiRPA 0.3's CROWN bound of sqrt(exp(z)) lies above sampled outputs (the wrong tangent slope):
    its linear relaxations are refused, naming lirpa-ibp, whose interval bound holds."""
    from robustcli.core.errors import InputError

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.sqrt(torch.exp(self.a(x))))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.rand(3, 6)
    with torch.no_grad():
        model.a.weight.mul_(3)
    spec = margin_spec(torch.tensor([0, 1, 2]), 3)
    for method in ("lirpa-crown", "lirpa-crown-ibp", "lirpa-alpha-crown"):
        with pytest.raises(InputError, match="square root.*not sound.*lirpa-ibp"):
            build_bounder(method, model, x[:2])
    low = build_bounder("lirpa-ibp", model, x[:2]).lower(InputSet.ball(x, 0.1, "linf"), spec)
    for pts in sample_ball(x, 0.1, "linf", 500, torch.Generator().manual_seed(1), corners=False):
        assert bool((low <= spec_values(model, pts, spec) + 1e-5).all())
    # the VNNLIB verifier's auto_LiRPA stages (graph models it cannot bound natively) refuse it too
    from robustcli.certify.spec_lirpa import lirpa_box_lower

    lo, hi = (x[:1] - 0.1).clamp(0, 1), (x[:1] + 0.1).clamp(0, 1)
    for method in ("crown", "alpha-crown"):
        with pytest.raises(InputError, match="square root.*not sound.*interval bounds"):
            lirpa_box_lower(model, lo, hi, spec[0], torch.zeros(spec.shape[1]), method)
    ibp = lirpa_box_lower(model, lo, hi, spec[0], torch.zeros(spec.shape[1]), "ibp")
    for pts in sample_ball(x[:1], 0.1, "linf", 500, torch.Generator().manual_seed(2), corners=False):
        assert bool((ibp.float() <= spec_values(model, pts, spec[:1]) + 1e-5).all())


def _relu_inputs(model: nn.Module, points: torch.Tensor) -> list[torch.Tensor]:
    """The values entering each nn.ReLU module, in the order the network applies them."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(points)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("kind,depth,bn,residual", NETS + [("pool", 3, False, False)])
@pytest.mark.parametrize("inputs", ["linf", "l2", "box"])
def test_intermediate_bounds_contain_every_sampled_relu_input(kind, depth, bn, residual, inputs):
    """Every bounder reports its bounds of each ReLU's input on request: one entry per ReLU, each
    containing the pre-activations of points sampled in the set; CROWN's lie inside IBP's (boxes
    and Linf balls)."""
    if kind == "pool":  # a max pooling between ReLUs: its input is bounded too, but is no ReLU's
        torch.manual_seed(5)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                              nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).eval()
        x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    else:
        model, x = _net(kind, depth, bn, residual, 7 + depth)
    eps = {"linf": 0.05, "l2": 0.4, "box": 0.05}[inputs]
    if inputs == "box":
        s = InputSet.box((x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
    else:
        s = InputSet.ball(x, eps, inputs)
    g = torch.Generator().manual_seed(2)
    pts = list(sample_ball(x, eps, "linf" if inputs == "box" else inputs, 100, g, corners=False))
    pts += list(sample_ball(x, eps, "linf" if inputs == "box" else inputs, 30, g, corners=True))
    samples = [_relu_inputs(model, p) for p in pts]
    n_relu = len(samples[0])
    methods = NATIVE + (["lirpa-crown"] if lirpa_available() and inputs != "box" else [])
    got = {m: build_bounder(m, model, x[:2]).intermediate(s) for m in methods}
    for m, layers in got.items():
        assert len(layers) == n_relu, m
        for k, b in enumerate(layers):
            vals = torch.stack([smp[k] for smp in samples])
            assert b.lower.shape == vals.shape[1:], (m, k)
            assert bool((b.lower <= vals + 1e-6).all() and (vals <= b.upper + 1e-6).all()), (m, b.name)
    if inputs == "l2":
        return  # native IBP carries the L2 ball exactly through the first layer; CROWN may be looser there
    for k in range(n_relu):  # CROWN computes in float64 and is intersected with IBP's float64 bounds
        crown, ibp = got["crown"][k], got["ibp"][k]
        assert bool((crown.lower >= ibp.lower - 1e-5 * (1 + ibp.lower.abs())).all()), k
        assert bool((crown.upper <= ibp.upper + 1e-5 * (1 + ibp.upper.abs())).all()), k


def test_ball_box_is_rounded_outward():
    """The float32 box of an eps ball contains the real ball: x - eps rounded to nearest lies inside
    it for about half of the points, which the box then would not cover."""
    x = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0))
    s = InputSet.ball(x, 0.1, "linf")
    xd = x.double()
    assert bool((s.lower.double() <= (xd - 0.1).clamp(0, 1)).all())
    assert bool((s.upper.double() >= (xd + 0.1).clamp(0, 1)).all())
    assert float((s.upper - s.lower).max()) <= 0.2 + 1e-6  # and not wider than one float32 step each side


def test_refusal_of_an_unsupported_pt2_is_one_line_on_stderr(tmp_path):
    """The auto_LiRPA probe behind a refusal runs quietly: the user reads the refusal alone (torch
    warned on stderr from inside the probe's copy of an exported program)."""
    import subprocess
    import sys

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Hardshrink(), nn.Linear(16, 10)).eval()
    x = torch.rand(2, 1, 8, 8)
    path = tmp_path / "h.pt2"
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("b", min=2)},)), str(path))
    r = subprocess.run([sys.executable, "-m", "robustcli", "certify", "--model", str(path), "--data", "digits", "--n",
                        "4", "--eps", "0.01", "--method", "crown"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "hardshrink" in r.stderr, r.stderr
