"""KV caches kept between engine calls, through transformers' public DynamicCache API only:"""
# the constructor (`ddp_cache_data=`) and iteration over (keys, values, ...) per layer; a test in
# tests/test_engine.py fails if either changes meaning. Caches are built without the model config,
# so every layer keeps all its positions: a sliding-window layer is masked by the model's own
# sliding mask, not truncated, and a prefix can be cut at any column.
from __future__ import annotations

import bisect

import torch
from transformers import DynamicCache


def empty_cache() -> DynamicCache:
    return DynamicCache()


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer[0], layer[1]) for layer in cache]


def gather_prefix(cache, rows: list[int], column: int, start_layer: int = 0):
    """A new cache holding, for output row i, the first `column` positions of cache row `rows[i]`
    (rows may repeat). `cache` is one DynamicCache or a list of them holding consecutive rows
    (row chunks kept apart: joining them would copy every one). Layers below `start_layer` will
    not run: they get a one-row placeholder of the right length, since only their length is read
    (for the masks)."""
    parts = [_layers(c) for c in (cache if isinstance(cache, list) else [cache])]
    runs = _runs(rows, [p[0][0].shape[0] for p in parts])
    out = []
    for i in range(len(parts[0])):
        if parts[0][i][0].shape[-2] < column:
            raise ValueError(f"cache layer {i} holds {parts[0][i][0].shape[-2]} positions, "
                             f"{column} needed")
        picked = [(runs[0][0], runs[0][1][:1])] if i < start_layer else runs
        out.append(tuple(joined([_take(parts[j][i][kv], local, column) for j, local in picked])
                         for kv in (0, 1)))
    return DynamicCache(ddp_cache_data=out)


def _runs(rows: list[int], sizes: list[int]) -> list[tuple[int, list[int]]]:
    """`rows` (indices over parts of `sizes` rows, in order) as runs of (part, local rows)."""
    starts = [sum(sizes[:j]) for j in range(len(sizes))]
    runs: list[tuple[int, list[int]]] = []
    for r in rows:
        if not 0 <= r < sum(sizes):
            raise IndexError(f"cache row {r} of {sum(sizes)}")
        j = bisect.bisect_right(starts, r) - 1
        if not runs or runs[-1][0] != j:
            runs.append((j, []))
        runs[-1][1].append(r - starts[j])
    return runs


def _take(t: torch.Tensor, rows: list[int], column: int) -> torch.Tensor:
    return t[torch.tensor(rows, device=t.device), :, :column]


def joined(parts: list, dim: int = 0):
    """Parts joined along `dim`; one part is returned as it is (no copy of large log-probs)."""
    if not parts or parts[0] is None:
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)
