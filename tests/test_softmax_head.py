"""A classifier that ends in a softmax (Keras and many exporters write one) certifies soundly: rows
over p = softmax(z) are bounded from bounds of the pairwise logit margins (certify/softmax_head.py),
never above a value the model takes in the ball (sampled and attacked points), and a margin row is
certified exactly where the logits' is. The same for property verification (`robust certify
--spec`, `robust vnncomp`) of torch models and ONNX files ending in a Softmax node."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcli.certify.bounders import InputSet, build_bounder, without_final_head
from robustcli.certify.graph import UnsupportedLayer
from robustcli.certify.softmax_head import (
    SpecRows,
    log_probability_rows_lower,
    log_softmax_rows_lower,
    margin_matrix,
    pair_rows,
    softmax_rows_lower,
)
from robustcli.certify.spec import margin_spec
from robustcli.certify.spec_verify import verify_property
from robustcli.certify.vnnlib import parse_vnnlib
from robustcli.core.errors import InputError
from robustcli.core.nn import LogProbabilities

K = 5


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, K)).eval()


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, K)).eval()


class FunctionalSoftmax(nn.Module):
    def __init__(self, logits: nn.Module):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return F.softmax(self.logits(x), dim=1)


def _rows(y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point: the K-1 margin rows of its class, K single-class rows and 4 random rows, random d
    on the last two kinds (d = 0 on the margins)."""
    N = len(y)
    margins = margin_spec(y, K)
    singles = torch.eye(K).expand(N, K, K) * torch.where(torch.rand(N, K, 1, generator=g) < 0.5, -1.0, 1.0)
    random = torch.randn(N, 4, K, generator=g)
    C = torch.cat([margins, singles, random], 1)
    d = torch.cat([torch.zeros(N, K - 1), torch.rand(N, K + 4, generator=g) - 0.5], 1)
    return C, d


def _worst_in_ball(model: nn.Module, x: torch.Tensor, eps: float, C: torch.Tensor, d: torch.Tensor,
                   g: torch.Generator, samples: int = 64, steps: int = 30) -> torch.Tensor:
    """(N, S): the least value of each row C f + d found by sampling the Linf ball and by PGD run on
    every row on its own (from random starts in the ball)."""
    N, S, _ = C.shape
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    worst = torch.full((N, S), float("inf"))
    with torch.no_grad():
        for _ in range(samples // 8):
            pts = lo + (hi - lo) * torch.rand((8, *x.shape), generator=g)
            v = torch.einsum("nsk,bnk->bns", C, model(pts.flatten(0, 1)).view(8, N, K)) + d
            worst = torch.minimum(worst, v.amin(0))
    rep = lambda t: t[:, None].expand(N, S, *t.shape[1:]).flatten(0, 1)  # noqa: E731 - one copy per row
    lo_r, hi_r = rep(lo), rep(hi)
    xa = (lo_r + (hi_r - lo_r) * torch.rand(lo_r.shape, generator=g)).requires_grad_(True)
    Cr, dr = C.flatten(0, 1), d.flatten()
    for _ in range(steps):
        v = (Cr * model(xa)).sum(1) + dr
        (grad,) = torch.autograd.grad(v.sum(), xa)
        with torch.no_grad():
            xa -= eps / 8 * grad.sign()
            xa.copy_(torch.minimum(torch.maximum(xa, lo_r), hi_r))
    with torch.no_grad():
        v = ((Cr * model(xa)).sum(1) + dr).view(N, S)
    return torch.minimum(worst, v)


# -- the algebra, on boxes of logits -----------------------------------------------------------------


def _logit_box(g: torch.Generator, N: int = 64, width: float = 3.0, scale: float = 3.0):
    centre = torch.randn(N, K, generator=g, dtype=torch.float64) * scale
    half = torch.rand(N, K, generator=g, dtype=torch.float64) * width
    lo, hi = centre - half, centre + half
    pairs = pair_rows(K)
    low = lo[:, pairs[:, 0]] - hi[:, pairs[:, 1]]  # exact bounds of z_k - z_j over the box
    return lo, hi, margin_matrix(low, pairs, K)


# spread 100: probabilities below float32's smallest normal, where the clamp of log p acts
@pytest.mark.parametrize("width,scale", [(3.0, 3.0), (60.0, 3.0), (1.0, 100.0)])
def test_rows_over_softmax_log_softmax_and_clamped_log_p_hold_on_every_logit_of_the_box(width, scale):
    g = torch.Generator().manual_seed(0)
    lo, hi, L = _logit_box(g, width=width, scale=scale)
    y = torch.randint(0, K, (len(lo),), generator=g)
    C, d = _rows(y, g)
    C, d = C.double(), d.double()
    C[:, K - 1 :] *= torch.rand(1, 1, 1, generator=g, dtype=torch.float64) * 3  # rows not of unit size too
    tiny = torch.finfo(torch.float32).tiny
    bounds = {"softmax": softmax_rows_lower(C, d, L), "log_softmax": log_softmax_rows_lower(C, d, L),
              "log_p": log_probability_rows_lower(C, d, L, tiny)}
    heads = {"softmax": lambda z: z.softmax(-1), "log_softmax": lambda z: z.log_softmax(-1),
             "log_p": lambda z: torch.log(z.softmax(-1).clamp_min(tiny))}
    corners = torch.randint(0, 2, (256, *lo.shape), generator=g).double()
    inside = torch.rand(256, *lo.shape, generator=g, dtype=torch.float64)
    for z in (lo + (hi - lo) * corners, lo + (hi - lo) * inside):
        for name, f in heads.items():
            v = torch.einsum("nsk,bnk->bns", C, f(z)) + d
            assert bool((v >= bounds[name]).all()), (name, float((v - bounds[name]).min()))
    assert bool(torch.isfinite(bounds["softmax"]).all())


def test_a_margin_bound_is_positive_exactly_where_the_logit_margin_bound_is():
    g = torch.Generator().manual_seed(1)
    for width in (0.05, 0.5, 5.0, 300.0):  # 300: exp(U) overflows float64 without the log-sum-exp form
        lo, hi, L = _logit_box(g, width=width)
        y = torch.randint(0, K, (len(lo),), generator=g)
        C = margin_spec(y, K, torch.float64)
        m = torch.stack([L[n, y[n]][torch.arange(K) != y[n]] for n in range(len(y))])
        low = softmax_rows_lower(C, None, L)
        assert torch.equal(low > 0, m > 0) and bool((low[m <= 0] <= 0).all())
        low_p = log_probability_rows_lower(C, None, L, torch.finfo(torch.float32).tiny)
        certified = (m > 0).all(1)
        assert torch.equal((low_p > 0).all(1), certified)


# -- bounders of torch models ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("form", ["sequential", "functional"])
def test_softmax_model_bounds_hold_on_sampled_and_attacked_points(method, arch, form):
    logits = _mlp() if arch == "mlp" else _cnn()
    model = nn.Sequential(logits, nn.Softmax(dim=1)).eval() if form == "sequential" else FunctionalSoftmax(logits).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand((4, 6) if arch == "mlp" else (4, 1, 8, 8), generator=g)
    eps = 0.05
    with torch.no_grad():
        y = logits(x).argmax(1)
    C, d = _rows(y, g)
    bounder = build_bounder(method, model, x[:2], alpha_iterations=5)
    low = bounder.lower(InputSet.ball(x, eps, "linf"), C, d)
    worst = _worst_in_ball(model, x, eps, C, d, g)
    assert bool((low <= worst + 1e-6).all()), float((worst - low).min())
    assert bool((low[:, : K - 1] > -1).all()) and bool(torch.isfinite(low).all())
    # margin rows alone: only the logit margins of each point's class are bounded (as for the logits)
    margins = bounder.lower(InputSet.ball(x, eps, "linf"), C[:, : K - 1])
    assert bool((margins <= worst[:, : K - 1] + 1e-6).all())


def test_many_classes_bound_only_the_margins_of_the_rows_classes_and_hold():
    torch.manual_seed(12)
    classes = 40  # above ALL_PAIRS_UP_TO: pairs (i, k) of the classes with a positive coefficient only
    logits = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, classes)).eval()
    model = nn.Sequential(logits, nn.Softmax(dim=1)).eval()
    g = torch.Generator().manual_seed(13)
    x = torch.rand(3, 6, generator=g)
    C = torch.cat([margin_spec(logits(x).argmax(1), classes)[:, :5], torch.randn(3, 3, classes, generator=g)], 1)
    d = torch.rand(3, 8, generator=g) - 0.5
    low = build_bounder("crown", model, x[:2]).lower(InputSet.ball(x, 0.02, "linf"), C, d)
    lo, hi = (x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1)
    with torch.no_grad():
        for _ in range(20):
            pts = lo + (hi - lo) * torch.rand((3, 6), generator=g)
            assert bool((low <= torch.einsum("nsk,nk->ns", C, model(pts)) + d + 1e-6).all())


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_certified_margins_of_a_softmax_model_are_its_logits(method):
    logits = _mlp(3)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(48, 6, generator=g)
    with torch.no_grad():
        spec = margin_spec(logits(x).argmax(1), K)
    sets = [InputSet.ball(x, eps, "linf") for eps in (0.002, 0.01, 0.03)]
    ref = build_bounder(method, logits, x[:2], alpha_iterations=5)
    mixed = False
    for model in (nn.Sequential(logits, nn.Softmax(dim=1)).eval(), FunctionalSoftmax(logits).eval(),
                  LogProbabilities(nn.Sequential(logits, nn.Softmax(dim=1))).eval()):
        bounder = build_bounder(method, model, x[:2], alpha_iterations=5)
        for s in sets:
            want = ref.lower(s, spec) > 0
            got = bounder.lower(s, spec) > 0
            assert torch.equal(got, want)
            mixed |= bool(want.any()) and not bool(want.all())
    assert mixed  # some rows certified and some not: the equality says something


def test_a_softmax_before_the_output_is_refused_in_one_line():
    class Mid(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, K)

        def forward(self, x):
            return self.b(F.softmax(self.a(x), dim=1))

    class OverChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 6 * 6, K)

        def forward(self, x):
            return self.fc(F.softmax(self.conv(x), dim=1).flatten(1))

    cases = [(Mid(), torch.rand(2, 6)), (OverChannels(), torch.rand(2, 1, 8, 8)),
             (nn.Sequential(nn.Linear(6, 8), nn.Softmax(dim=1), nn.Linear(8, K)), torch.rand(2, 6))]
    for model, x in cases:
        assert without_final_head(model.eval(), x) is None
        for method in ("ibp", "crown"):
            with pytest.raises(InputError) as e:
                build_bounder(method, model.eval(), x)
            msg = str(e.value)
            assert "softmax" in msg and "\n" not in msg, msg


class Doubled(nn.Sequential):
    """A Sequential whose own forward does more than its layers: its softmax is not its last step."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_a_sequential_with_its_own_forward_is_read_from_its_graph():
    net = _mlp()
    x = torch.rand(2, 6)
    model = Doubled(*net, nn.Softmax(dim=1)).eval()
    assert without_final_head(model, x) is None
    with pytest.raises(InputError, match="softmax"):
        build_bounder("crown", model, x)


def test_the_head_removed_is_named():
    net = _mlp()
    x = torch.rand(2, 6)
    assert without_final_head(net, x) is None
    assert without_final_head(nn.Sequential(net, nn.Softmax(dim=-1)), x)[1] == "softmax"
    assert without_final_head(nn.Sequential(net, nn.LogSoftmax(dim=1)), x)[1] == "log_softmax"
    assert without_final_head(FunctionalSoftmax(net), x)[1] == "softmax"
    assert without_final_head(LogProbabilities(FunctionalSoftmax(net)), x)[1] == "log_probabilities"
    with pytest.raises(UnsupportedLayer):  # a softmax the bounders do not strip is refused, not bounded
        build_bounder("ibp", nn.Sequential(nn.Softmax(dim=1), net), x)


# -- property verification -----------------------------------------------------------------------------


def _box_property(lo, hi, outputs: str) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lo))] + [f"(declare-const Y_{j} Real)" for j in range(K)]
    for i, (a, b) in enumerate(zip(lo, hi)):
        lines += [f"(assert (>= X_{i} {float(a)!r}))", f"(assert (<= X_{i} {float(b)!r}))"]
    return "\n".join(lines + [outputs]) + "\n"


def _robustness(label: int) -> str:
    return "(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(K) if j != label) + "))"


def _properties(model: nn.Module, x0: torch.Tensor, log: bool = False):
    """(text, known answer) pairs on boxes around x0 for a model with outputs p (`log`: log p):
    robustness at a small radius (holds), robustness of a class that is not the prediction
    (violated at x0 itself), probability thresholds and a margin with an offset."""
    with torch.no_grad():
        p = model(x0[None])[0].double()
    p = p.exp() if log else p
    out = (lambda v: float(np.log(v))) if log else float
    label = int(p.argmax())
    other = int(p.argsort()[0])
    lo, hi = (x0 - 0.002).clamp(0, 1).tolist(), (x0 + 0.002).clamp(0, 1).tolist()
    gap = out(p[label]) - out(p[other])
    return [
        (_box_property(lo, hi, _robustness(label)), "holds"),
        (_box_property(lo, hi, _robustness(other)), "violated"),
        (_box_property(lo, hi, f"(assert (<= Y_{label} {out(p[label] / 2)!r}))"), "holds"),  # over half its value
        (_box_property(lo, hi, f"(assert (>= Y_{label} {out(min(1.0, float(p[label]) * 1.5))!r}))"), None),
        (_box_property(lo, hi, f"(assert (<= (- Y_{label} Y_{other}) {gap / 4!r}))"), "holds"),
    ]


def _confident_point(model: nn.Module, dim: int, g: torch.Generator) -> torch.Tensor:
    xs = torch.rand(256, dim, generator=g)
    with torch.no_grad():
        p = model(xs)
    return xs[int(p.max(1).values.argmax())]


@pytest.mark.parametrize("head", ["softmax", "functional softmax", "log_softmax"])
def test_properties_over_a_softmax_model_are_decided_soundly(head):
    logits = _mlp(5)
    model = nn.Sequential(logits, nn.Softmax(dim=1) if head == "softmax" else nn.LogSoftmax(dim=1)).eval()
    if head == "functional softmax":
        model = FunctionalSoftmax(logits).eval()
    g = torch.Generator().manual_seed(6)
    x0 = _confident_point(model, 6, g)
    for text, want in _properties(model, x0, log=head == "log_softmax"):
        prop = parse_vnnlib(text)
        res = verify_property(model, prop, (6,), timeout=30, methods=("attack", "ibp", "crown", "bab"))
        if want is not None:
            assert res.status == want, (text.splitlines()[-1], res.stages)
        if res.status == "violated":
            case = prop.cases[0]
            with torch.no_grad():
                y = model(res.counterexample[None].float()).double()
            assert bool(case.violated_by(y).all()) and bool(((res.counterexample >= case.lower - 1e-7)
                                                             & (res.counterexample <= case.upper + 1e-7)).all())
        if res.status == "holds":
            lo, hi = prop.cases[0].lower.float(), prop.cases[0].upper.float()
            pts = lo + (hi - lo) * torch.rand(4000, 6, generator=g)
            with torch.no_grad():
                assert not bool(prop.cases[0].violated_by(model(pts).double()).any())


def test_margin_rows_over_softmax_branch_on_the_logits():
    """Robustness properties CROWN leaves open are decided by branch and bound (ReLU and input
    splits) on the logit margins, as for the logits model (radii measured: CROWN proves 0.15, not
    0.2; 0.25 is violated); a threshold row has no such split and stays open there, saying why."""
    logits = _mlp(7)
    model = nn.Sequential(logits, nn.Softmax(dim=1)).eval()
    x0 = _confident_point(model, 6, torch.Generator().manual_seed(8))
    label = int(model(x0[None]).argmax())
    by_bab = []
    for r in (0.2, 0.25):
        box = (x0 - r).clamp(0, 1).tolist(), (x0 + r).clamp(0, 1).tolist()
        for split in ("relu", "input"):
            args = dict(timeout=20, methods=("crown", "bab"), bab_split=split)
            on_p = verify_property(model, parse_vnnlib(_box_property(*box, _robustness(label))), (6,), **args)
            on_z = verify_property(logits, parse_vnnlib(_box_property(*box, _robustness(label))), (6,), **args)
            assert on_p.status == on_z.status, (r, split, on_p.stages, on_z.stages)
            by_bab.append((on_p.status, on_p.method))
            if on_p.status == "violated":
                with torch.no_grad():
                    assert int(model(on_p.counterexample[None]).argmax()) != label
    assert ("holds", "bab") in by_bab and ("violated", "bab") in by_bab, by_bab
    box = (x0 - 0.2).clamp(0, 1).tolist(), (x0 + 0.2).clamp(0, 1).tolist()
    lo, hi = torch.tensor(box[0]), torch.tensor(box[1])
    with torch.no_grad():  # p_label never gets this low in the box (sampled), but CROWN's intervals of p say it may
        least = float(model(lo + (hi - lo) * torch.rand(4000, 6, generator=torch.Generator().manual_seed(0)))[:, label].min())
    row = torch.eye(K)[label].view(1, 1, K)
    crown = float(build_bounder("crown", model, lo[None]).lower(InputSet.box(lo[None], hi[None]), row))
    assert crown < least
    threshold = parse_vnnlib(_box_property(*box, f"(assert (<= Y_{label} {(crown + least) / 2!r}))"))
    res = verify_property(model, threshold, (6,), timeout=20, methods=("crown", "bab"), bab_split="relu")
    assert res.status == "unknown" and "only margin rows" in res.stages[-1]["note"], res.stages
    rows = SpecRows("softmax", torch.tensor([[1.0, -1, 0, 0, 0], [1, 0, 0, 0, 0]]), torch.tensor([0.0, -0.5]))
    assert rows.direct.tolist() == [True, False] and len(rows.logit_C) == 1 + K * (K - 1)


def _onnx_softmax_mlp(path, opset: int, seed: int = 0, float64: bool = False):
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from vnncomp_lookalikes import save_graph, t

    rng = np.random.default_rng(seed)
    kind = np.float64 if float64 else np.float32
    sizes = (6, 24, 24, K)
    nodes, inits, h = [], [], "input"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [t(f"w{i}", (rng.standard_normal((b, a)) / np.sqrt(a)).astype(kind)),
                  t(f"b{i}", (0.1 * rng.standard_normal(b)).astype(kind))]
        nodes.append(helper.make_node("Gemm", [h, f"w{i}", f"b{i}"], [f"z{i}"], transB=1))
        h = f"z{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [h], [f"h{i}"]))
            h = f"h{i}"
    axis = {"axis": 1} if opset < 13 else {}
    nodes.append(helper.make_node("Softmax", [h], ["output"], **axis))
    return save_graph(path, nodes, inits, (1, 6), (1, K), opset=opset,
                      dtype=TensorProto.DOUBLE if float64 else TensorProto.FLOAT)


@pytest.mark.parametrize("opset", [11, 13])
def test_onnx_file_ending_in_softmax_bounds_and_verifies(tmp_path, opset):
    from robustcli.certify.onnx_check import onnxruntime_function
    from robustcli.certify.onnx_import import onnx_to_torch

    path = _onnx_softmax_mlp(tmp_path / "m.onnx", opset)
    conv = onnx_to_torch(path)
    model = conv.module
    g = torch.Generator().manual_seed(9)
    x = torch.rand(4, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    C, d = _rows(y, g)
    low = build_bounder("crown", model, x[:2]).lower(InputSet.ball(x, 0.03, "linf"), C, d)
    assert bool((low <= _worst_in_ball(model, x, 0.03, C, d, g) + 1e-6).all())

    reference = onnxruntime_function(path, (6,))
    x0 = _confident_point(model, 6, g)
    for text, want in _properties(model, x0):
        prop = parse_vnnlib(text)
        res = verify_property(model, prop, (6,), timeout=30, reference=reference)
        if want is not None:
            assert res.status == want, (text.splitlines()[-1], res.stages)
        if res.status == "violated":
            assert res.confirmed_by == "onnxruntime"
            assert bool(prop.cases[0].violated_by(reference(res.counterexample[None])).all())
        assert want != "violated" or res.status != "holds"


def test_certify_command_on_a_softmax_model_matches_its_logits(tmp_path, run_cli, digits_mlp):
    x = torch.rand(2, 1, 8, 8)
    batch = torch.export.Dim("batch", min=2)
    models = {"logits": digits_mlp, "probs": nn.Sequential(digits_mlp, nn.Softmax(1)),
              "mid": nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Softmax(1), nn.Linear(16, 10))}
    for name, m in models.items():
        torch.export.save(torch.export.export(m.eval(), (x,), dynamic_shapes=({0: batch},)), str(tmp_path / f"{name}.pt2"))
    verified = {}
    for name in ("logits", "probs"):
        out = tmp_path / f"{name}.json"
        r = run_cli("certify", "--model", tmp_path / f"{name}.pt2", "--data", "digits", "--n", "40", "--eps", "0.02",
                    "--method", "ibp", "crown", "--pgd-steps", "2", "--json", out)
        assert r.exit_code == 0, r.output
        verified[name] = [row["verified_accuracy"] for row in json.loads(out.read_text())["results"]]
    assert verified["probs"] == verified["logits"] and max(verified["logits"]) > 0
    r = run_cli("certify", "--model", tmp_path / "mid.pt2", "--data", "digits", "--n", "4", "--eps", "0.02",
                "--method", "crown")
    assert r.exit_code == 2
    assert "softmax" in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_certify_spec_command_proves_a_property_of_an_onnx_softmax_file(tmp_path, run_cli):
    path = _onnx_softmax_mlp(tmp_path / "m.onnx", 13, seed=1)
    from robustcli.certify.onnx_import import onnx_to_torch

    model = onnx_to_torch(path).module
    x0 = _confident_point(model, 6, torch.Generator().manual_seed(10))
    (tmp_path / "p.vnnlib").write_text(_properties(model, x0)[0][0])
    out = tmp_path / "r.json"
    r = run_cli("certify", "--model", path, "--spec", tmp_path / "p.vnnlib", "--timeout", "30", "--json", out)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["status"] == "holds"


def test_vnncomp_runs_a_float64_onnx_softmax_file(tmp_path, run_cli):
    """The runner converts the file in its own precision (float64 here): the head is found on the
    float64 graph, a property that holds is proved and a violated one answered with a counterexample."""
    path = _onnx_softmax_mlp(tmp_path / "net.onnx", 13, seed=2, float64=True)
    from robustcli.certify.onnx_import import onnx_to_torch

    model = onnx_to_torch(path, dtype=None).module
    assert next(model.parameters()).dtype == torch.float64
    x0 = _confident_point(model.float(), 6, torch.Generator().manual_seed(11))
    props = _properties(onnx_to_torch(path).module, x0)
    (tmp_path / "holds.vnnlib").write_text(props[0][0])
    (tmp_path / "violated.vnnlib").write_text(props[1][0])
    (tmp_path / "instances.csv").write_text("net.onnx,holds.vnnlib,30\nnet.onnx,violated.vnnlib,30\n")
    out = tmp_path / "results.csv"
    r = run_cli("vnncomp", tmp_path / "instances.csv", "--out", out)
    assert r.exit_code == 0, r.output
    assert [line.split(",")[4] for line in out.read_text().splitlines()] == ["holds", "violated"]
