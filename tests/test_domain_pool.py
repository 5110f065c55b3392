"""The branch-and-bound queue: what it hands out and keeps matches a plain list of domains."""

from __future__ import annotations

import torch

from robustcli.certify.domain_pool import DomainPool


def test_pool_pops_the_worst_and_keeps_every_other_domain():
    g = torch.Generator().manual_seed(0)
    score = torch.randn(5, generator=g, dtype=torch.float64)
    ident = torch.arange(5)
    payload = torch.randn(5, 3, 2, generator=g)
    pool = DomainPool([score, ident, payload], score=0)
    reference = {int(i): (float(s), payload[i].clone()) for i, s in zip(ident, score)}
    next_id = 5
    for step in range(60):
        k = int(torch.randint(1, 6, (1,), generator=g))
        s, i, p = pool.pop_worst(k)
        want = sorted(reference, key=lambda j: reference[j][0])[: min(k, len(reference))]
        assert sorted(i.tolist()) == sorted(want)
        assert s.tolist() == sorted(s.tolist())  # worst first
        for j, row in zip(i.tolist(), p):
            assert torch.equal(row, reference.pop(j)[1])
        m = int(torch.randint(0, 7, (1,), generator=g))  # children of this round (none at times)
        new_s = torch.randn(m, generator=g, dtype=torch.float64)
        new_i = torch.arange(next_id, next_id + m)
        new_p = torch.randn(m, 3, 2, generator=g)
        next_id += m
        pool.push([new_s, new_i, new_p])
        for a, b, c in zip(new_s, new_i, new_p):
            reference[int(b)] = (float(a), c)
        assert len(pool) == len(reference)
        assert sorted(pool.data[1][: len(pool)].tolist()) == sorted(reference)
    while len(pool):
        _, i, _ = pool.pop_worst(4)
        for j in i.tolist():
            reference.pop(j)
    assert not reference
