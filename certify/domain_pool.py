"""Branch and bound's queue of open domains: rows of preallocated tensors, one row per domain.

Each round takes the `batch` domains with the lowest bound and adds their children. Rebuilding
the queue's tensors for that (keep the rest by a mask, concatenate the children) copies every
waiting domain twice a round, and a domain of a ReLU split search carries its slopes, Lagrange
multipliers and intervals (about 170 KB on a 4 x 256 MLP with 9 rows). Here a round copies only
what it takes and what it adds: taken rows are refilled by rows from the end of the queue
(swap-remove), children are written after the last row, and the capacity doubles when full.
"""

from __future__ import annotations

import torch


def worst_first(score: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The next round's domains, the `batch` with the lowest bound (worst first), and a mask of
    the domains that wait."""
    order = score.argsort()[:batch]
    rest = torch.ones(len(score), dtype=torch.bool, device=score.device)
    rest[order] = False
    return order, rest


class DomainPool:
    """Tensors sharing a first axis of domains; `score` (one of them, by position) orders them."""

    def __init__(self, tensors: list[torch.Tensor], score: int):
        self.n = len(tensors[score])
        if any(len(t) != self.n for t in tensors):
            raise ValueError("every tensor of a domain pool needs one row per domain")
        self.score_at = score
        self.data = [t.clone() for t in tensors]

    def __len__(self) -> int:
        return self.n

    @property
    def score(self) -> torch.Tensor:
        return self.data[self.score_at][: self.n]

    def pop_worst(self, k: int) -> list[torch.Tensor]:
        """Remove the k domains with the lowest score (all, if fewer) and return their rows, worst first."""
        order, rest = worst_first(self.score, k)
        taken = [t[order] for t in self.data]
        n, m = self.n, len(order)
        tail = n - m
        gone = ~rest
        holes = order[order < tail]  # taken rows before the tail, refilled by the tail's kept rows
        movers = torch.arange(tail, n, device=order.device)[~gone[tail:]]
        if len(holes):
            for t in self.data:
                t[holes] = t[movers]
        self.n = tail
        return taken

    def push(self, rows: list[torch.Tensor]) -> None:
        """Append domains: one tensor per pool tensor, each with the same number of rows."""
        m = len(rows[self.score_at])
        if m == 0:
            return
        need = self.n + m
        if need > len(self.data[0]):
            cap = max(need, 2 * len(self.data[0]))
            self.data = [torch.cat([t[: self.n], t.new_empty((cap - self.n, *t.shape[1:]))]) for t in self.data]
        for t, r in zip(self.data, rows):
            t[self.n : need] = r
        self.n = need
