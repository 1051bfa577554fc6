"""The only code that registers hooks on, or swaps, modules of a model.

Both hooks are forward pre-hooks on decoder layers, so they see exactly the
residual stream *entering* a layer (what `output_hidden_states[l]` returns).
Every handle is removed when the `with` block ends, exceptions included.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import NonFiniteResidualError


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@contextmanager
def _registered(layers, hooks: dict):
    handles = []
    try:
        for layer_id, fn in hooks.items():
            handles.append(layers[layer_id].register_forward_pre_hook(fn, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture(layers, layer_ids, index: torch.Tensor | None = None, check_finite: bool = True):
    """Record the residual entering each layer in `layer_ids` during the forward passes in the block.

    `index` is a [batch, k] LongTensor of positions to keep per row (None keeps all).
    Yields a dict layer -> list of [batch, k, d] float32 tensors, one per forward call.
    """
    store: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_ids}
    dtypes: dict[int, torch.dtype] = {}

    def make(layer_id):
        def hook(module, args, kwargs):  # kept minimal: it runs once per layer per forward
            h = _hidden(args, kwargs)
            dtypes[layer_id] = h.dtype
            if index is not None:
                h = h.gather(1, index.to(h.device).unsqueeze(-1).expand(-1, -1, h.shape[-1]))
            store[layer_id].append(h.detach().float())
        return hook

    with _registered(layers, {layer: make(layer) for layer in layer_ids}):
        yield store
    if check_finite:  # once per block, not per hook: the first non-finite layer is named
        for layer_id, tensors in store.items():
            if not all(bool(torch.isfinite(t).all()) for t in tensors):
                raise NonFiniteResidualError(
                    f"non-finite residual entering layer {layer_id} (dtype {dtypes[layer_id]}); "
                    "float16 overflows on many models: run in bfloat16 or float32"
                )


@dataclass(frozen=True)
class Patch:
    """Vectors to write into the residual entering one layer: rows[i], positions[i] <- vectors[i]."""

    rows: torch.Tensor  # [k] long
    positions: torch.Tensor  # [k] long
    vectors: torch.Tensor  # [k, d]


def make_patches(entries) -> dict[int, Patch]:
    """Group (layer, row, position, vector) tuples by layer."""
    by_layer: dict[int, list] = {}
    for layer, row, pos, vec in entries:
        by_layer.setdefault(int(layer), []).append((row, pos, vec))
    return {
        layer: Patch(
            rows=torch.tensor([r for r, _, _ in items], dtype=torch.long),
            positions=torch.tensor([p for _, p, _ in items], dtype=torch.long),
            vectors=torch.stack([v for _, _, v in items]),
        )
        for layer, items in by_layer.items()
    }


@contextmanager
def substitute(layers, patches: dict[int, Patch]):
    """Replace residual vectors at (layer, row, position) sites for the forward passes in the block."""

    def make(patch: Patch):
        def hook(module, args, kwargs):
            h = _hidden(args, kwargs)
            h = h.clone()
            dev = h.device
            h[patch.rows.to(dev), patch.positions.to(dev)] = patch.vectors.to(device=dev, dtype=h.dtype)
            return _with_hidden(args, kwargs, h)
        return hook

    with _registered(layers, {layer: make(p) for layer, p in patches.items()}):
        yield


class _Given(torch.nn.Module):
    """Stands in for every decoder layer below the start: returns the residual given for the start's input."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states, *args, **kwargs):
        return self.hidden


@contextmanager
def start_at(layers, start: int, hidden: torch.Tensor):
    """Run only layers `start`.. : the ones below are swapped out for the given residual `hidden`
    ([batch, seq, d]) entering layer `start`. The model's own loop still builds masks, rotary
    embeddings and the cache for every layer; the originals are put back when the block ends."""
    if not 0 < start < len(layers):
        raise ValueError(f"start layer must be in 1..{len(layers) - 1}, got {start}")
    originals = [layers[i] for i in range(start)]
    given = _Given(hidden)
    try:
        for i in range(start):
            layers[i] = given
        yield
    finally:
        for i, module in enumerate(originals):
            layers[i] = module


def hook_count(model: torch.nn.Module) -> int:
    """Hooks of any kind currently registered anywhere in the model (0 after every lac call)."""
    return sum(
        len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()
    )
