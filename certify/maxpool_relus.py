"""Max pooling written with ReLUs, so that ReLU branch and bound can split it.

A window's maximum is a running maximum of its inputs, each step one ReLU:
    m_1 = x_1,   m_j = m_{j-1} + relu(x_j - m_{j-1})   (j = 2 .. k),   max_j x_j = m_k,
since a + relu(b - a) = max(a, b). The graph engine relaxes a max pooling with DeepPoly's lines
(certify/dag_bounds.py), which cannot be split: once every ReLU of a branch-and-bound domain is
fixed, an undecided window still leaves the network non-affine and the domain undecidable. In the
ReLU form each step is a ReLU neuron like any other, so branch and bound splits it, refreshes its
bounds and closes fully split domains by LP (the network is then affine): the search is complete
on max pooling networks too (the ReLU form's CROWN bound at the root may be looser than DeepPoly's).

Each output window becomes, per slot j: a gather of slot j from the
pooled value, the difference with the running maximum (a negation and an add), its ReLU and the
add into the running maximum; a last node reshapes the maxima to the pooling's output shape.
Padding slots (torch pads with -inf) read the window's first real input instead: max(a, a) = a.
"""

from __future__ import annotations

import torch
from torch import nn

from robustcli.certify.dag_bounds import Dag, Node
from robustcli.certify.onnx_layers import ElementwiseAffine, Reshape


class Gather(nn.Module):
    """y = flatten(x)[:, index]: a linear map with one 1 per row, kept as an index (a dense matrix
    of a 32x32x32 map's windows would take gigabytes). Bound engines take it through IBP's default
    (m(c), m(r): |W| r = gather(r)) and back_affine through `transpose_rows`."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, self.index]

    def transpose_rows(self, A: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        """Rows A (R, n_out) of a function of the output as rows (R, *in_shape) of the input: each
        row's coefficients scattered back to the entries they were gathered from (summed where a
        padding slot repeats an input)."""
        n_in = 1
        for s in in_shape:
            n_in *= s
        out = torch.zeros(A.shape[0], n_in, dtype=A.dtype, device=A.device)
        return out.index_add(1, self.index, A.reshape(A.shape[0], -1)).reshape(A.shape[0], *in_shape)


def maxpool_as_relus(dag: Dag) -> Dag:
    """The same function as `dag`, every max pooling node replaced by its ReLU form (see the module
    docstring); other nodes are kept (in the same order). A graph without max pooling is returned
    as it is."""
    return relu_form(dag)[0]


def relu_form(dag: Dag) -> tuple[Dag, dict[int, int]]:
    """`maxpool_as_relus(dag)` and, for every node i of `dag`, the node of the ReLU form holding the
    same value (a max pooling: the reshape of its windows' running maxima). Bounds of node i in one
    graph are bounds of node `of[i]` in the other (certify/maxpool_forms.py intersects them)."""
    if not any(n.kind == "maxpool" for n in dag.nodes):
        return dag, {i: i for i in range(len(dag.nodes))}
    nodes: list[Node] = []
    new_of: dict[int, int] = {}

    def add(node: Node) -> int:
        nodes.append(node)
        return len(nodes) - 1

    dt, dev = dag.dtype, dag.device
    for i, n in enumerate(dag.nodes):
        parents = tuple(new_of[q] for q in n.parents)
        if n.kind != "maxpool":
            new_of[i] = add(Node(n.kind, parents, layers=n.layers, axis=n.axis))
            continue
        (p,) = parents
        n_in = dag.nodes[n.parents[0]].numel
        window = n.window
        first_real = window.gather(1, (window < n_in).to(torch.int8).argmax(1, keepdim=True))
        window = torch.where(window < n_in, window, first_real)  # a padding slot repeats a real input
        negate = ElementwiseAffine(torch.tensor(-1.0, dtype=dt, device=dev), None)
        m = add(Node("affine", (p,), layers=[Gather(window[:, 0])]))
        for j in range(1, window.shape[1]):
            x_j = add(Node("affine", (p,), layers=[Gather(window[:, j])]))
            minus_m = add(Node("affine", (m,), layers=[negate]))
            diff = add(Node("add", (x_j, minus_m)))
            step = add(Node("relu", (diff,)))
            m = add(Node("add", (m, step)))
        new_of[i] = add(Node("affine", (m,), layers=[Reshape(n.shape)]))
    out = Dag(nodes, new_of[dag.output], dt, dev)
    out._shapes(dag.nodes[0].shape)
    return out, new_of
