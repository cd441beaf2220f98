"""The union-find both the channel analysis (coupled channel variables) and the grouping (channel classes
joined by shared producers) use."""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over integers; `new(n)` hands out n fresh consecutive ids. The smaller id is the root."""

    def __init__(self):
        self.parent: dict[int, int] = {}
        self._next = 0

    def new(self, n: int) -> np.ndarray:
        start = self._next
        self._next += n
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p.get(root, root) != root:
            root = p[root]
        while p.get(i, i) != root:
            p[i], i = root, p[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join a[i] with b[i] wherever both are ids (>= 0)."""
        keep = (a >= 0) & (b >= 0) & (a != b)
        if keep.any():
            for x, y in np.unique(np.stack([a[keep], b[keep]], 1), axis=0):
                self.union(int(x), int(y))
