"""KV caches kept between engine calls, through transformers' public cache API: a DynamicCache
whose layers write each new position into spare room instead of concatenating; and the State
that says where each row's positions sit in one."""
# DynamicLayer.update joins the whole cache to each new position with torch.cat: a decode step
# copies every layer's keys and values. RoomyLayer subclasses it (update, the `keys`/`values`
# views every reader uses) and RoomyCache builds on Cache's public `layers=` constructor, keeping
# DynamicCache's iteration over (keys, values, ...) per layer; tests in tests/test_engine.py fail
# if either changes meaning. Caches are built without the model config, so every layer keeps all
# its positions: a sliding-window layer is masked by the model's own sliding mask, not
# truncated, and a prefix can be cut at any column.
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Shared:
    """A continuation's keys (or values) as lac's grouped attention reads them: a prefix left in
    the kept cache it came from ([P, kv, C, d], one row per prompt), then each row's own positions
    ([rows, kv, t, d]). `slots` [P, g] lays the rows out by the prompt they continue (g: the most
    rows on one prompt; spare slots repeat row 0 and are discarded) and `slot[r]` is row r's
    place, so each prompt's prefix is read by one product over all its rows, never copied."""

    prefix: torch.Tensor
    own: torch.Tensor
    slots: torch.Tensor
    slot: torch.Tensor

    def _by_prompt(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """[P*g, kv, m, n] slot tensor -> [P, kv, g*m, n]."""
        p, g = self.slots.shape
        return t.view(p, g, *t.shape[1:]).transpose(1, 2).reshape(p, t.shape[1], -1, n)

    def _by_row(self, t: torch.Tensor, m: int) -> torch.Tensor:
        """[P, kv, g*m, n] -> [rows, kv, m, n]."""
        p, g = self.slots.shape
        return t.view(p, t.shape[1], g, m, -1).transpose(1, 2).reshape(p * g, t.shape[1], m, -1)[
            self.slot]

    def scores(self, grouped: torch.Tensor) -> torch.Tensor:
        """Queries [rows, kv, m, d] against the prefix keys: [rows, kv, m, C]."""
        m, d = grouped.shape[-2:]
        return self._by_row(torch.matmul(self._by_prompt(grouped[self.slots.flatten()], d),
                                         self.prefix.transpose(2, 3)), m)

    def weigh(self, weights: torch.Tensor) -> torch.Tensor:
        """Attention weights [rows, kv, m, C] over the prefix values: [rows, kv, m, d]."""
        rows, kv, m, c = weights.shape
        spread = weights.new_zeros(self.slots.numel(), kv, m, c)
        spread[self.slot] = weights
        return self._by_row(torch.matmul(self._by_prompt(spread, c), self.prefix), m)


class SharedLayer(RoomyLayer):
    """A cache layer whose first C positions are read in place from a kept cache (see Shared);
    its own positions grow as a RoomyLayer's. Only lac's grouped attention reads it."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor,
                 slot: torch.Tensor):
        super().__init__()
        self.prefix, self.slots, self.slot = (keys, values), slots, slot

    def update(self, key_states, value_states, *args, **kwargs):
        own = super().update(key_states, value_states)
        return tuple(Shared(p, o, self.slots, self.slot) for p, o in zip(self.prefix, own))

    def get_seq_length(self) -> int:
        return self.prefix[0].shape[-2] + super().get_seq_length()


class RoomyCache(DynamicCache):
    """A DynamicCache of RoomyLayers: from `data` (a (keys, values) pair per layer), from
    `layers`, or empty."""

    def __init__(self, data=None, layers=None):
        if data is None and layers is None:
            Cache.__init__(self, layer_class_to_replicate=RoomyLayer)
        else:
            Cache.__init__(self, layers=layers or [RoomyLayer(k, v) for k, v in data])


def empty_cache() -> DynamicCache:
    return RoomyCache()


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if any(isinstance(layer, SharedLayer) for layer in cache.layers):
        raise ValueError("a continuation that reads its prefix in place cannot be continued: its "
                         "layers hold only their own positions")
    return [(layer[0], layer[1]) for layer in cache]


def read_in_place(cache: DynamicCache, rows: list[int], column: int) -> RoomyCache:
    """A cache continuing, for output row i, the first `column` positions of cache row `rows[i]`
    (rows may repeat) with nothing copied: each layer reads them from `cache` (see Shared)."""
    lo, hi = min(rows), max(rows) + 1  # a view of the prompts the rows continue, and between
    g = max(Counter(rows).values())
    table: list[list[int]] = [[] for _ in range(hi - lo)]
    slot = []
    for r, p in enumerate(rows):
        slot.append((p - lo) * g + len(table[p - lo]))
        table[p - lo].append(r)
    slots, slot = torch.tensor([t + [0] * (g - len(t)) for t in table]), torch.tensor(slot)
    out = []
    for i, (keys, values) in enumerate(_layers(cache)):  # .to: no copy on the same device
        _check_holds(keys, i, column)
        out.append(SharedLayer(keys[lo:hi, :, :column], values[lo:hi, :, :column],
                               slots.to(keys.device), slot.to(keys.device)))
    return RoomyCache(layers=out)


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
        _check_holds(parts[0][i][0], i, column)
        picked = [(runs[0][0], runs[0][1][:1])] if i < start_layer else runs
        out.append(tuple(joined([_take(parts[j][i][kv], local, column) for j, local in picked])
                         for kv in (0, 1)))
    return RoomyCache(out)


def _check_holds(keys: torch.Tensor, layer: int, column: int) -> None:
    if keys.shape[-2] < column:
        raise ValueError(f"cache layer {layer} holds {keys.shape[-2]} positions, {column} needed")


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


@dataclass
class State:
    """A batch's cached positions: row r's sequence position p sits at column offsets[r] + p
    for p >= shared[r] (its earlier positions, computed once for several rows, sit before
    padding that separates them from the rest)."""

    cache: object  # a DynamicCache, or a list of them holding consecutive row chunks
    mask: torch.Tensor  # [rows, columns] 1 where a real token is cached
    offsets: list[int]
    logits: torch.Tensor | None  # [rows, V] next-token logits after the last position
    shared: list[int]

    def column(self, row: int, position: int) -> int:
        if position < self.shared[row]:
            raise ValueError(f"position {position} lies in the shared prefix "
                             f"({self.shared[row]})")
        return self.offsets[row] + position


def merged(states: list[State]) -> State:
    """One State from row chunks that share their columns, for continuations only: the caches stay
    apart (a list; joining them would hold every cache twice, and gather_prefix reads across them)
    and no logits are kept, since decode runs on one chunk's state."""
    if len(states) == 1:
        return states[0]
    parts = [c for s in states for c in (s.cache if isinstance(s.cache, list) else [s.cache])]
    return State(parts, torch.cat([s.mask for s in states]),
                 [o for s in states for o in s.offsets], None,
                 [r for s in states for r in s.shared])
