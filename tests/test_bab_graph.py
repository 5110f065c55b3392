"""Branch and bound on graph models (residual adds, concatenations, max pooling) against exact or
sampled answers.

2-D inputs: a 401 x 401 grid gives the margin's minimum, so a property shifted by 3% of the
margin's range either way has a known answer, and complete search (ReLU splits closed by LP, or
input splits) must prove it or return a counterexample the model confirms. Larger inputs (1x4x4):
thresholds around the smallest margin found by sampling and PGD; `holds` must never come where a
sampled point violates, and a counterexample must be real. The sub-problem bounds themselves
(refreshed with splits, beta terms) are checked against sampled points that meet the splits.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from certify_nets import node_values
from robustcli.certify import dag_bounds as db
from robustcli.certify.bab import bab_refute, close_domain
from robustcli.certify.bab_network import DagNetwork
from robustcli.certify.input_bab import input_bab_refute
from robustcli.core.nn import Concat, Residual

ROW = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)  # the margin z_0 - z_1


def residual_mlp(seed: int, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    block = Residual(nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)))
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), block, nn.ReLU(), nn.Linear(width, 3)).double().eval()


def concat_mlp(seed: int, width: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    branches = Concat([nn.Sequential(nn.Linear(width, width), nn.ReLU()), nn.Identity(),
                       nn.Sequential(nn.Linear(width, 4), nn.ReLU(), nn.Linear(4, 4))])
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), branches, nn.ReLU(), nn.Linear(2 * width + 4, 3)).double().eval()


def shared_relu_mlp(seed: int) -> nn.Module:
    """Two ReLU nodes read one value (a concatenation of relu(a) and Linear(relu(a))): one split
    layer feeding two ReLUs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 6), Concat([nn.ReLU(), nn.Sequential(nn.ReLU(), nn.Linear(6, 5))]),
                         nn.Linear(11, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()


def pool_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 8),
                         nn.ReLU(), nn.Linear(8, 3)).double().eval()


def residual_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    block = Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1)))
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), block, nn.ReLU(), nn.Flatten(),
                         nn.Linear(32, 3)).double().eval()


NETS_2D = {"residual": residual_mlp, "concat": concat_mlp, "shared-relu": shared_relu_mlp}


def _box2():
    return torch.full((1, 2), -1.0, dtype=torch.float64), torch.full((1, 2), 1.0, dtype=torch.float64)


def _grid_margin(model) -> tuple[float, float]:
    g = torch.linspace(-1, 1, 401, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        m = (model(pts) @ ROW.T).squeeze(1)
    return float(m.min()), float(m.max() - m.min())


def _check_for(model, shape, d):
    def check(x):
        with torch.no_grad():
            return (model(x.double().reshape(-1, *shape)) @ ROW.T + d).squeeze(1) <= 0

    return check


def _assert_sound(out, should_hold: bool | None, model, shape, d, lo, hi):
    """`should_hold`: True (must be proved), False (must not be; a counterexample must be real), None
    (unknown answer: whatever is claimed must be right, checked by the caller's samples)."""
    if should_hold:
        assert out.proved, out
    if should_hold is False:
        assert not out.proved  # a grid point violates: no proof may exist
    if out.counterexample is not None:
        x = out.counterexample.double().reshape(1, *shape)
        assert bool(((x >= lo) & (x <= hi)).all())
        with torch.no_grad():
            assert float(model(x) @ ROW.T + d) <= 0  # the point really violates


def _search(split: str, dag: db.Dag, lo, hi, d: torch.Tensor, check):
    if split == "input":
        return input_bab_refute(dag, lo, hi, ROW[None], d[None], check=check, deadline=None, max_domains=200_000)
    inter = db.crown_intermediate(dag, lo, hi)
    return bab_refute(dag, lo, hi, ROW[None], d[None], inter, deadline=None, max_domains=20_000, batch=256,
                      check=check, refresh=split == "relu-refresh")


@pytest.mark.parametrize("split", ["relu-refresh", "relu-reuse", "input"])
@pytest.mark.parametrize("name,seed", [(n, s) for n in NETS_2D for s in range(2)] +
                         [pytest.param(n, s, marks=pytest.mark.slow) for n in NETS_2D for s in (2, 3)])
def test_branch_and_bound_on_graphs_agrees_with_the_grid(name, seed, split):
    """ReLU splitting (beta-CROWN, FSB, LP closing; refreshed or reused sub-problem bounds) and input
    splitting on a residual / concatenating graph: complete on 2-D inputs, so each proves the
    property with 3% to spare and finds a real counterexample with 3% too little."""
    model = NETS_2D[name](seed)
    dag = db.Dag.of(model, (2,))
    lo, hi = _box2()
    true_min, spread = _grid_margin(model)
    for offset, should_hold in ((0.03, True), (-0.03, False)):
        d = torch.tensor([-true_min + offset * spread], dtype=torch.float64)
        out = _search(split, dag, lo, hi, d, _check_for(model, (2,), d))
        _assert_sound(out, should_hold, model, (2,), d, lo, hi)
        if not should_hold:
            assert out.reason == "counterexample", out


def test_relu_split_proves_what_alpha_crown_leaves_open_on_a_residual_graph():
    """With 3% of the margin's range to spare, alpha-CROWN's bound on the residual graph is still
    negative (it can fail), branch and bound's is not."""
    model = residual_mlp(0)
    dag = db.Dag.of(model, (2,))
    lo, hi = _box2()
    true_min, spread = _grid_margin(model)
    d = torch.tensor([-true_min + 0.03 * spread], dtype=torch.float64)
    inter = db.crown_intermediate(dag, lo, hi)
    tight: dict = {}
    alpha = db.alpha_crown_spec(dag, lo, hi, ROW, d[None], inter, iterations=40, tightened_out=tight)
    assert float(alpha) < 0
    out = bab_refute(dag, lo, hi, ROW[None], d[None], tight, deadline=None, max_domains=20_000)
    assert out.proved and out.domains > 1


# -- larger inputs: sampled and PGD minima --------------------------------------------------------------
def _sampled_min(model, lo, hi, n: int = 4000, steps: int = 40) -> tuple[float, float]:
    """The smallest margin found by uniform samples and a signed-gradient descent from 64 of them,
    and the sampled margins' range."""
    g = torch.Generator().manual_seed(5)
    pts = lo + (hi - lo) * torch.rand(n, *lo.shape[1:], generator=g, dtype=torch.float64)
    with torch.no_grad():
        m = (model(pts) @ ROW.T).squeeze(1)
    x = pts[m.argsort()[:64]].clone()
    step = float((hi - lo).max()) / 20
    best = float(m.min())
    for _ in range(steps):
        x.requires_grad_(True)
        val = (model(x) @ ROW.T).squeeze(1)
        best = min(best, float(val.detach().min()))
        (gx,) = torch.autograd.grad(val.sum(), x)
        x = torch.minimum(torch.maximum(x - step * gx.sign(), lo), hi).detach()
        step *= 0.9
    return best, float(m.max() - m.min())


CNN_CASES = [("residual-cnn", residual_cnn, 1, 0.1), ("pool-cnn", pool_cnn, 2, 0.1)]


@pytest.mark.parametrize("name,make,seed,eps", CNN_CASES)
def test_graph_cnns_never_prove_a_sampled_violation(name, make, seed, eps):
    """1x4x4 inputs, residual and max pooling CNNs: thresholds 20% of the sampled margins' range above
    the smallest margin found (may hold) and at it (violated by a found point). ReLU splitting
    (refresh and reuse) and input splitting never prove the violated one, return only real
    counterexamples, and max pooling networks never close a domain whose windows are undecided."""
    model = make(seed)
    shape = (1, 4, 4)
    x0 = torch.rand(1, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lo, hi = x0 - eps, x0 + eps
    dag = db.Dag.of(model, shape)
    found, spread = _sampled_min(model, lo, hi)
    for offset, should_hold in ((0.2, None), (0.0, False)):
        d = torch.tensor([-found + offset * spread], dtype=torch.float64)
        check = _check_for(model, shape, d)
        inter = db.crown_intermediate(dag, lo, hi)
        for refresh in (True, False):
            out = bab_refute(dag, lo, hi, ROW[None], d[None], inter, deadline=None, max_domains=3_000, batch=128,
                             check=check, refresh=refresh)
            _assert_sound(out, should_hold, model, shape, d, lo, hi)
            if out.reason == "exhausted":
                assert any(n.kind == "maxpool" for n in dag.nodes)  # only an undecided max pooling stops it
        out = input_bab_refute(dag, lo, hi, ROW[None], d[None], check=check, deadline=None, max_domains=20_000)
        _assert_sound(out, should_hold, model, shape, d, lo, hi)


def test_residual_cnn_branch_and_bound_proves_a_property_alpha_crown_cannot():
    """On the residual CNN (1x4x4, 32 + 32 ReLUs), a threshold between alpha-CROWN's bound and the
    smallest margin found: alpha-CROWN fails, ReLU branch and bound proves it."""
    model = residual_cnn(1)
    shape = (1, 4, 4)
    x0 = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lo, hi = x0 - 0.1, x0 + 0.1
    dag = db.Dag.of(model, shape)
    found, _ = _sampled_min(model, lo, hi)
    inter = db.crown_intermediate(dag, lo, hi)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    tight: dict = {}
    alpha = float(db.alpha_crown_spec(dag, lo, hi, ROW, zero, inter, iterations=20, tightened_out=tight))
    assert alpha < found
    d = torch.tensor([-(alpha + 0.7 * (found - alpha))], dtype=torch.float64)  # 70% of the way to the found minimum
    out = bab_refute(dag, lo, hi, ROW[None], d[None], tight, deadline=None, max_domains=20_000, batch=128,
                     check=_check_for(model, shape, d))
    assert out.proved, out


# -- the sub-problem bounds ------------------------------------------------------------------------------
SUB_CASES = [("residual", residual_mlp(4), (2,), 1.0), ("concat", concat_mlp(5), (2,), 1.0),
             ("shared-relu", shared_relu_mlp(6), (2,), 1.0),
             ("pool-cnn", pool_cnn(3), (1, 4, 4), 0.15), ("residual-cnn", residual_cnn(3), (1, 4, 4), 0.15),
             ("pool-cnn-relu-form", pool_cnn(3), (1, 4, 4), 0.15)]


def _graph(name: str, model: nn.Module, shape: tuple[int, ...]) -> db.Dag:
    from robustcli.certify.maxpool_relus import maxpool_as_relus

    dag = db.Dag.of(model, shape)
    return maxpool_as_relus(dag) if name.endswith("relu-form") else dag


@pytest.mark.parametrize("name,model,shape,eps", SUB_CASES, ids=[c[0] for c in SUB_CASES])
def test_refreshed_bounds_and_beta_bounds_hold_for_points_meeting_the_splits(name, model, shape, eps):
    """Random split assignments (half of them the activation pattern of a sampled point, so that the
    domain is not empty; half random signs): every sampled point of the box that meets a domain's
    splits lies inside the domain's refreshed, reused and child-refreshed (from a parent with one
    split fewer, only downstream of that split) intervals and is never below the domain's
    beta-CROWN bound with random betas and slopes; a domain found empty holds no sampled point."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    dag = _graph(name, model, shape)
    net = DagNetwork(dag)
    x0 = torch.rand(1, *shape, generator=g, dtype=torch.float64) * 0.5
    lo, hi = x0 - eps, x0 + eps
    inter = db.crown_intermediate(dag, lo, hi)
    base = [(l.reshape(1, -1), u.reshape(1, -1)) for l, u in net.carried(inter)]
    pts = lo + (hi - lo) * torch.rand(20_000, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        vals = node_values(dag, pts)
        out_vals = vals[dag.output] @ ROW.T.squeeze(1)
    B = 16
    splits = []
    for b in range(B):
        anchor = vals
        k = int(torch.randint(0, len(pts), (1,), generator=g))
        sp = []
        for j, q in enumerate(net.split_nodes):
            l, u = base[net.slots[j]]
            unstable = (l[0] < 0) & (u[0] > 0)
            pick = unstable & (torch.rand(unstable.shape, generator=g) < 0.3)
            sign = torch.where(anchor[q][k] >= 0, 1, -1) if b % 2 == 0 else \
                torch.where(torch.rand(unstable.shape, generator=g) < 0.5, 1, -1)
            sp.append(torch.where(pick, sign, 0).to(torch.int8))
        splits.append(sp)
    sp = [torch.stack([s[j] for s in splits]) for j in range(len(net.split_nodes))]
    rep = [(l.expand(B, -1).clone(), u.expand(B, -1).clone()) for l, u in base]
    # a parent per domain: one split of a random split layer undone; the child refreshes from the
    # parent's refreshed intervals only downstream of that layer's node (`settled`)
    L = len(net.split_nodes)
    parent_sp, settled = [s.clone() for s in sp], torch.full((B,), L, dtype=torch.long)
    for b in range(B):
        layers = [j for j in range(L) if bool((sp[j][b] != 0).any())]
        if layers:
            j = layers[int(torch.randint(len(layers), (1,), generator=g))]
            parent_sp[j][b, (sp[j][b] != 0).nonzero().flatten()[0]] = 0
            settled[b] = j
    parent = net.intermediate(lo, hi, base=rep, splits=parent_sp)
    child = net.intermediate(lo, hi, base=[(l.reshape(B, -1), u.reshape(B, -1)) for l, u in parent], splits=sp,
                             settled=settled)
    for bnd in (net.intermediate(lo, hi, base=rep, splits=sp), net.clamp(rep, sp), child):
        bnd = [(l.reshape(B, -1), u.reshape(B, -1)) for l, u in bnd]
        R = 1
        alphas = [torch.rand(B, R, s.shape[1], dtype=torch.float64, generator=g) for s in sp]
        betas = [torch.rand(B, R, s.shape[1], dtype=torch.float64, generator=g) for s in sp]
        terms = [-bt * s.to(torch.float64).unsqueeze(1) for bt, s in zip(betas, sp)]
        low = net.lower(ROW.reshape(1, 1, -1).expand(B, 1, -1), lo, hi, bnd, alphas, terms).squeeze(1)
        met = 0
        for b in range(B):
            inside = torch.ones(len(pts), dtype=torch.bool)
            for j, q in enumerate(net.split_nodes):
                s = sp[j][b]
                inside &= ((vals[q] >= 0) | (s <= 0)).all(1) & ((vals[q] <= 0) | (s >= 0)).all(1)
            empty = any(bool((l[b] > u[b]).any()) for l, u in bnd)
            if empty:
                assert not bool(inside.any())
                continue
            if not bool(inside.any()):
                continue
            met += 1
            for k, q in enumerate(net.keys):
                l, u = bnd[k]
                v = vals[q][inside]
                assert bool((v >= l[b] - 1e-9).all()) and bool((v <= u[b] + 1e-9).all()), (name, q)
            assert float(out_vals[inside].min()) >= float(low[b]) - 1e-9
        assert met >= B // 4  # the check above ran on enough domains


@pytest.mark.parametrize("name,model,shape,eps", SUB_CASES, ids=[c[0] for c in SUB_CASES])
def test_closed_domain_rows_are_the_network_on_the_domain(name, model, shape, eps):
    """With every ReLU fixed to a point's phases (a small box around it decides the max pooling
    windows), the domain's affine rows evaluate to the model's margin at points of the domain, and
    the LP's minimiser is a point whose margin is the LP's minimum."""
    g = torch.Generator().manual_seed(2)
    dag = _graph(name, model, shape)
    net = DagNetwork(dag)
    x0 = torch.rand(1, *shape, generator=g, dtype=torch.float64)
    lo, hi = x0 - 1e-4, x0 + 1e-4
    with torch.no_grad():
        vals = node_values(dag, x0)
    sp = [torch.where(vals[q] >= 0, 1, -1).to(torch.int8) for q in net.split_nodes]
    bnd = net.intermediate(lo, hi, base=None, splits=sp)
    bnd = [(l.reshape(-1), u.reshape(-1)) for l, u in bnd]
    assert net.closable(bnd)
    a, b = net.affine_rows(None, ROW, bnd, [s[0] for s in sp])
    with torch.no_grad():
        margin = float(model(x0) @ ROW.T)
    assert abs(float((a @ x0.flatten().numpy())[0] + b[0]) - margin) < 1e-9
    refuted, x = close_domain(net, lo, hi, ROW, torch.tensor([-margin + 1.0], dtype=torch.float64), bnd,
                              [s[0] for s in sp])
    assert refuted is True or (refuted is None and x is None)  # margin + 1 > 0 near x0 (the box is tiny)
    refuted, x = close_domain(net, lo, hi, ROW, torch.tensor([-margin - 1e-3], dtype=torch.float64), bnd,
                              [s[0] for s in sp])
    assert refuted is False and x is not None
    with torch.no_grad():
        assert float(model(x.reshape(1, *shape)) @ ROW.T) - margin - 1e-3 <= 1e-7


def test_undecided_max_pooling_is_never_closed():
    """A max pooling window whose inputs' intervals overlap: the network is not affine on the domain
    even with every ReLU fixed, so the domain is not closable and close_domain claims nothing."""
    model = pool_cnn(0)
    dag = db.Dag.of(model, (1, 4, 4))
    net = DagNetwork(dag)
    lo, hi = torch.zeros(1, 1, 4, 4, dtype=torch.float64), torch.ones(1, 1, 4, 4, dtype=torch.float64)
    bnd = [(l.reshape(-1), u.reshape(-1)) for l, u in net.carried(db.crown_intermediate(dag, lo, hi))]
    assert not net.closable(bnd)
    sp = [torch.zeros(l.numel(), dtype=torch.int8) for l, _ in (bnd[k] for k in net.slots)]
    assert close_domain(net, lo, hi, ROW, torch.zeros(1, dtype=torch.float64), bnd, sp) == (None, None)


def test_input_split_proves_a_max_pooling_property_alpha_crown_leaves_open():
    """The max pooling CNN (16 inputs): alpha-CROWN's bound is negative, input splitting proves the
    property (20% of the sampled margins' range above the smallest margin found)."""
    model = pool_cnn(1)
    shape = (1, 4, 4)
    x0 = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lo, hi = x0 - 0.05, x0 + 0.05
    dag = db.Dag.of(model, shape)
    found, spread = _sampled_min(model, lo, hi)
    d = torch.tensor([-found + 0.2 * spread], dtype=torch.float64)
    inter = db.crown_intermediate(dag, lo, hi)
    assert float(db.alpha_crown_spec(dag, lo, hi, ROW, d[None], inter)) < 0
    out = input_bab_refute(dag, lo, hi, ROW[None], d[None], check=_check_for(model, shape, d), deadline=None,
                           max_domains=20_000)
    assert out.proved, out


# -- the verifier's bab stage on graph models ----------------------------------------------------------
def _graph_property(model, offset: float):
    """`Y_0 - Y_1 > min + offset * range` on [-1, 1]^2 (grid minimum of the float32 model), as VNNLIB."""
    from onnx_helpers import vnnlib_box
    from robustcli.certify.vnnlib import parse_vnnlib

    g = torch.linspace(-1, 1, 401)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        y = model(pts)
    m = y[:, 0] - y[:, 1]
    shift = float(m.min()) - offset * float(m.max() - m.min())
    return parse_vnnlib(vnnlib_box([-1.0, -1.0], [1.0, 1.0], 0, 3, extra_outputs=f"(assert (<= Y_0 (+ Y_1 {shift!r})))"))


@pytest.mark.parametrize("split,bounds", [("relu", "auto"), ("relu", "reuse"), ("relu", "refresh"), ("input", "auto")])
def test_verifier_bab_stage_decides_a_residual_graph(split, bounds):
    """`verify_property` on a residual graph: the `bab` stage runs on the native graph (ReLU or input
    splits, every `--bab-bounds`) and proves the property alpha-CROWN leaves open; a property a grid
    point violates is answered `violated` with a confirmed point."""
    from robustcli.certify.spec_verify import verify_property

    model = residual_mlp(0).float()
    res = verify_property(model, _graph_property(model, 0.03), (2,), timeout=60, bab_split=split, bab_bounds=bounds)
    assert res.status == "holds" and res.method == "bab", res.stages
    kind = "domains (ReLU split)" if split == "relu" else "boxes (input split)"
    assert kind in res.stages[-1]["note"]
    bad = verify_property(model, _graph_property(model, -0.03), (2,), timeout=60, bab_split=split, bab_bounds=bounds,
                          methods=("ibp", "crown", "alpha-crown", "bab"))
    assert bad.status == "violated" and bad.method == "bab"
    with torch.no_grad():
        y = model(bad.counterexample.reshape(1, 2))
    assert bool(bad.counterexample.abs().max() <= 1.0) and float(y[0, 0] - y[0, 1]) <= bad.outputs[0] - bad.outputs[1] + 1e-6


def test_verifier_bab_stage_on_a_graph_answers_near_its_timeout():
    """A residual MLP (6 inputs, 2 x 48 ReLUs) on a wide box, the threshold at 90% of the way from CROWN's
    bound to the smallest margin found: ReLU branch and bound cannot finish, and the answer
    comes within a second of the 3 s timeout."""
    import time

    from onnx_helpers import vnnlib_box
    from robustcli.certify.spec_verify import verify_property
    from robustcli.certify.vnnlib import parse_vnnlib

    torch.manual_seed(0)
    block = Residual(nn.Sequential(nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 48)))
    model = nn.Sequential(nn.Linear(6, 48), nn.ReLU(), block, nn.ReLU(), nn.Linear(48, 3)).eval()
    lo, hi = torch.full((1, 6), 0.1, dtype=torch.float64), torch.full((1, 6), 0.9, dtype=torch.float64)
    dag = db.Dag.of(model, (6,))
    crown = float(db.crown_spec(dag, lo, hi, ROW)[0])
    import copy

    found, _ = _sampled_min(copy.deepcopy(model).double(), lo, hi)
    shift = crown + 0.9 * (found - crown)
    prop = parse_vnnlib(vnnlib_box(lo[0].tolist(), hi[0].tolist(), 0, 3,
                                   extra_outputs=f"(assert (<= Y_0 (+ Y_1 {shift!r})))"))
    t0 = time.monotonic()
    res = verify_property(model, prop, (6,), timeout=3.0, bab_split="relu", methods=("crown", "bab"))
    assert time.monotonic() - t0 < 4.0
    assert res.status in ("timeout", "holds"), res.stages


@pytest.mark.parametrize("seed", [0, 1])
def test_a_chain_through_the_graph_adapter_takes_the_same_search(seed):
    """A ReLU chain bounded as a graph: the graph engine's bounds are the chain engine's, so both
    adapters drive the one loop through the same search (outcome and domain count), for ReLU splits
    with refresh and reuse and for input splits."""
    from robustcli.certify import chain_bounds as cb

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    chain, dag = cb.Chain.of(model, (2,)), db.Dag.of(model, (2,))
    lo, hi = _box2()
    true_min, spread = _grid_margin(model)
    for offset in (0.03, -0.03):
        d = torch.tensor([-true_min + offset * spread], dtype=torch.float64)
        check = _check_for(model, (2,), d)
        for refresh in (True, False):
            runs = [bab_refute(eng, lo, hi, ROW[None], d[None], inter, deadline=None, max_domains=20_000, batch=256,
                               check=check, refresh=refresh)
                    for eng, inter in ((chain, cb.crown_intermediate(chain, lo, hi)), (dag, db.crown_intermediate(dag, lo, hi)))]
            assert [(r.proved, r.domains, r.reason) for r in runs[:1]] == [(r.proved, r.domains, r.reason) for r in runs[1:]]
        runs = [input_bab_refute(eng, lo, hi, ROW[None], d[None], check=check, deadline=None) for eng in (chain, dag)]
        assert (runs[0].proved, runs[0].domains) == (runs[1].proved, runs[1].domains)


# -- max pooling in its ReLU form --------------------------------------------------------------------------
POOLS = [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.MaxPool2d(2, stride=1, dilation=2),
         nn.AdaptiveMaxPool2d((2, 3))]


@pytest.mark.parametrize("pool", POOLS, ids=[repr(p) for p in POOLS])
def test_max_pooling_relu_form_is_the_same_function_and_bounded_soundly(pool):
    """m_j = m_{j-1} + relu(x_j - m_{j-1}) per window (padding slots repeating a real input) computes
    the pooling exactly, for padding, ceil_mode, dilation and adaptive windows; CROWN on the ReLU form
    is below every sampled margin."""
    from robustcli.certify.maxpool_relus import maxpool_as_relus

    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), pool, nn.Flatten())
    n = body(torch.zeros(1, 1, 6, 7)).shape[1]
    model = nn.Sequential(*body, nn.Linear(n, 3)).double().eval()
    shape = (1, 6, 7)
    relu_form = maxpool_as_relus(db.Dag.of(model, shape))
    assert not any(node.kind == "maxpool" for node in relu_form.nodes)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(200, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(node_values(relu_form, x)[relu_form.output], model(x), atol=1e-12, rtol=0)
    lo, hi = x[:1] - 0.1, x[:1] + 0.1
    low = db.crown_spec(relu_form, lo, hi, ROW)[0]
    pts = lo + (hi - lo) * torch.rand(4000, *shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert float((model(pts) @ ROW.T).min()) >= float(low) - 1e-9


def test_relu_split_on_the_relu_form_of_max_pooling_decides_what_deeppoly_cannot():
    """On the max pooling CNN, ReLU splitting with DeepPoly's max pooling lines stops without an
    answer (an undecided window once the ReLUs are fixed); on the pooling's ReLU form it proves the
    thresholds above the found minimum and returns a real counterexample at it."""
    from robustcli.certify.maxpool_relus import maxpool_as_relus

    model = pool_cnn(1)
    shape = (1, 4, 4)
    x0 = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lo, hi = x0 - 0.05, x0 + 0.05
    dag = db.Dag.of(model, shape)
    relu_form = maxpool_as_relus(dag)
    found, spread = _sampled_min(model, lo, hi)
    for offset, should_hold in ((0.05, True), (0.0, False)):
        d = torch.tensor([-found + offset * spread], dtype=torch.float64)
        check = _check_for(model, shape, d)
        pooled = bab_refute(dag, lo, hi, ROW[None], d[None], db.crown_intermediate(dag, lo, hi), deadline=None,
                            max_domains=20_000, check=check)
        assert not pooled.proved and pooled.reason in ("exhausted", "counterexample")
        for refresh in (True, False):
            out = bab_refute(relu_form, lo, hi, ROW[None], d[None], db.crown_intermediate(relu_form, lo, hi),
                             deadline=None, max_domains=20_000, check=check, refresh=refresh)
            _assert_sound(out, should_hold, model, shape, d, lo, hi)
            if not should_hold:
                assert out.reason == "counterexample", out


def test_verifier_relu_splits_a_max_pooling_graph_in_its_relu_form():
    """`verify_property` with ReLU splits on the max pooling CNN: alpha-CROWN leaves the property open,
    the bab stage (on the ReLU form) proves it."""
    from onnx_helpers import vnnlib_box
    from robustcli.certify.spec_verify import verify_property
    from robustcli.certify.vnnlib import parse_vnnlib

    model = pool_cnn(1)
    shape = (1, 4, 4)
    x0 = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lo, hi = x0 - 0.05, x0 + 0.05
    found, spread = _sampled_min(model, lo, hi)
    shift = found - 0.1 * spread  # violated iff Y_0 - Y_1 <= shift
    prop = parse_vnnlib(vnnlib_box(lo.flatten().tolist(), hi.flatten().tolist(), 0, 3,
                                   extra_outputs=f"(assert (<= Y_0 (+ Y_1 {shift!r})))"))
    res = verify_property(model.float(), prop, shape, timeout=60, bab_split="relu")
    assert res.status == "holds" and res.method == "bab", res.stages
    assert "domains (ReLU split)" in res.stages[-1]["note"]


def test_verifier_bab_stage_names_why_a_graph_without_lines_gets_none():
    """A graph with a Hardshrink (no native lines): the bab stage says it needs a chain or a graph the
    native engine bounds, and the answer stays open. A Tanh graph is branched on (its max pooling's
    ReLU form split, the tanh's lines kept; never closed by the LP as if affine)."""
    from onnx_helpers import vnnlib_box
    from robustcli.certify.spec_verify import verify_property
    from robustcli.certify.vnnlib import parse_vnnlib

    torch.manual_seed(0)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    lo, hi = (x - 0.3).clamp(0, 1).flatten(), (x + 0.3).clamp(0, 1).flatten()
    for act in (nn.Hardshrink(0.1), nn.Tanh()):
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), act, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)).eval()
        label = int(model(x).argmax(1))
        res = verify_property(model, parse_vnnlib(vnnlib_box(lo.tolist(), hi.tolist(), label, 3)), (1, 4, 4),
                              methods=("bab",), bab_split="relu", attack_steps=1, attack_restarts=1)
        if res.status == "violated":  # the attack before branching may find a counterexample
            continue
        if isinstance(act, nn.Hardshrink):
            assert res.status == "unknown" and "needs a chain or a ReLU graph" in res.stages[-1]["note"], res.stages
        else:
            assert "domains (ReLU split)" in res.stages[-1]["note"], res.stages
            if res.status == "holds":  # then no sampled point of the box violates it
                pts = lo + (hi - lo) * torch.rand(4000, 16, generator=torch.Generator().manual_seed(1))
                with torch.no_grad():
                    y = model(pts.reshape(-1, 1, 4, 4))
                assert bool((y.argmax(1) == label).all())
