"""KV caches kept between engine calls, through transformers' public cache API: a DynamicCache
whose layers write each new position into spare room instead of concatenating."""
# DynamicLayer.update joins the whole cache to each new position with torch.cat: a decode step
# copies every layer's keys and values. RoomyLayer subclasses it (update, the `keys`/`values`
# views every reader uses) and RoomyCache builds on Cache's public `layers=` constructor, keeping
# DynamicCache's iteration over (keys, values, ...) per layer; tests in tests/test_engine.py fail
# if either changes meaning. Caches are built without the model config, so every layer keeps all
# its positions: a sliding-window layer is masked by the model's own sliding mask, not
# truncated, and a prefix can be cut at any column.
from __future__ import annotations

import bisect

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

ROOM = 16  # spare positions a layer adds when a one-token step finds it full (bounded: a kept
# state carries them until it is freed)


class RoomyLayer(DynamicLayer):
    """keys/values are views of the first positions of larger buffers; an update writes after
    them, and only a layer out of room copies (into n + new, plus ROOM for a decode step)."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
        super().__init__()
        if keys is not None:  # kept (made contiguous): the first update copies them, never writes
            self.device, self.is_initialized = keys.device, True
            keys, values = keys.contiguous(), values.contiguous()
            self._buf, self.keys, self.values = (keys, values), keys, values

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device, self.is_initialized = key_states.device, True
        self._buf = tuple(t.new_empty(*t.shape[:-2], 0, t.shape[-1])
                          for t in (key_states, value_states))
        self.keys, self.values = self._buf

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, q = self.keys.shape[-2], key_states.shape[-2]
        if n + q > self._buf[0].shape[-2]:
            size = n + q + (ROOM if q == 1 else 0)
            grown = tuple(b.new_empty(*b.shape[:-2], size, b.shape[-1]) for b in self._buf)
            for new, old in zip(grown, (self.keys, self.values)):
                new[..., :n, :] = old
            self._buf = grown
        for buf, states in zip(self._buf, (key_states, value_states)):
            buf[..., n: n + q, :] = states
        self.keys, self.values = (b[..., : n + q, :] for b in self._buf)
        return self.keys, self.values


class RoomyCache(DynamicCache):
    """A DynamicCache of RoomyLayers: from `data` (a (keys, values) pair per layer) or empty."""

    def __init__(self, data=None):
        if data is None:
            Cache.__init__(self, layer_class_to_replicate=RoomyLayer)
        else:
            Cache.__init__(self, layers=[RoomyLayer(k, v) for k, v in data])


def empty_cache() -> DynamicCache:
    return RoomyCache()


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
    return RoomyCache(out)


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
