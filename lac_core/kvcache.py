"""KV caches kept between engine calls, through transformers' public DynamicCache API only:"""
# the constructor (`ddp_cache_data=`) and iteration over (keys, values, ...) per layer; a test in
# tests/test_engine.py fails if either changes meaning. Caches are built without the model config,
# so every layer keeps all its positions: a sliding-window layer is masked by the model's own
# sliding mask, not truncated, and a prefix can be cut at any column.
from __future__ import annotations

import torch
from transformers import DynamicCache


def empty_cache() -> DynamicCache:
    return DynamicCache()


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer[0], layer[1]) for layer in cache]


def gather_prefix(cache: DynamicCache, rows: list[int], column: int, start_layer: int = 0):
    """A new cache holding, for output row i, the first `column` positions of cache row `rows[i]`
    (rows may repeat). Layers below `start_layer` will not run: they get a one-row placeholder of
    the right length, since only their length is read (for the masks)."""
    out = []
    for i, (keys, values) in enumerate(_layers(cache)):
        if keys.shape[-2] < column:
            raise ValueError(f"cache layer {i} holds {keys.shape[-2]} positions, {column} needed")
        idx = torch.tensor(rows[:1] if i < start_layer else rows, device=keys.device)
        out.append((keys[idx, :, :column], values[idx, :, :column]))
    return DynamicCache(ddp_cache_data=out)


def concat_rows(caches: list[DynamicCache]) -> DynamicCache:
    """One cache holding the rows of several caches of the same length, in order."""
    layers = [_layers(c) for c in caches]
    return DynamicCache(ddp_cache_data=[(torch.cat([c[i][0] for c in layers]),
                                         torch.cat([c[i][1] for c in layers]))
                                        for i in range(len(layers[0]))])
