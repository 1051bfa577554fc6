"""The only code that hooks or swaps a model's modules."""
# Forward pre-hooks on decoder layers see exactly the residual *entering* a layer
# (`output_hidden_states[l]`); every handle is removed when its `with` block ends, exceptions
# included.
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import InterventionError, NonFiniteResidualError


def hidden_of(args, kwargs) -> torch.Tensor:
    """The residual a decoder layer is called with (positional or `hidden_states=`): what a
    forward pre-hook reads and replaces (a documented seam: tests build broken hooks with it)."""
    return args[0] if args else kwargs["hidden_states"]


def with_hidden(args, kwargs, hidden):
    """The layer's call arguments with its residual replaced, as a pre-hook returns them."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@contextmanager
def _registered(layers, hooks: dict, post: bool = False):
    handles = []
    try:
        for i, fn in hooks.items():
            register = layers[i].register_forward_hook if post else \
                layers[i].register_forward_pre_hook
            handles.append(register(fn, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture(layers, layer_ids, index: torch.Tensor | None = None, check_finite: bool = True):
    """Record the residual entering each of `layer_ids` in the block's forward passes."""
    # Yields layer -> [float32 [batch, k, d] per call], k the positions of `index` ([batch, k];
    # None keeps all).
    store: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_ids}
    dtypes: dict[int, torch.dtype] = {}

    def make(layer_id):
        def hook(module, args, kwargs):  # kept minimal: it runs once per layer per forward
            h = hidden_of(args, kwargs)
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
                    "float16 overflows on many models: run in bfloat16 or float32")


@dataclass(frozen=True)
class Sub:
    """One substitution: the residual entering `layer` at `position` becomes `vector`."""

    layer: int
    position: int
    vector: torch.Tensor  # [d]


def on_layer(vector: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """`vector` on the device and in the dtype of the residual it enters: with a model spread over
    several devices, each layer's input lives on that layer's device, never assumed to be one."""
    return vector.to(device=hidden.device, dtype=hidden.dtype)


@dataclass
class Audit:
    """Proof that substitutions landed: each one is read back from the input the layer actually
    ran on (after every pre-hook) and compared bit for bit with the vector in the model's dtype.
    A substitution that never lands would otherwise read as KL 0, which C1 takes for HOLDS."""

    checked: int = 0  # substitutions read back equal to their vector
    forwards: int = 0  # forward calls that carried substitutions

    def record(self) -> dict:
        return {"substitutions_read_back": self.checked, "forward_calls": self.forwards}

    def expect(self, planned: int, what: str, since: dict | None = None) -> dict:
        """The record of this experiment (the counts since `since`, an earlier record), once each of
        its `planned` substitutions was read back exactly once."""
        since = since or {"substitutions_read_back": 0, "forward_calls": 0}
        done = {k: v - since[k] for k, v in self.record().items()}
        if done["substitutions_read_back"] != planned:
            raise InterventionError(f"{what}: {planned} substitutions were planned and "
                                    f"{done['substitutions_read_back']} read back at their layer; "
                                    "the numbers would mix substituted and clean runs, so the "
                                    "experiment stops here")
        return done


def _read_back(layer: int, rows, positions, vectors, audit: Audit, seen: set):
    """A forward hook on the substituted layer: it sees the arguments the layer ran on."""
    def hook(module, args, kwargs, output):
        h = hidden_of(args, kwargs)
        got = h[rows.to(h.device), positions.to(h.device)]
        want = on_layer(vectors, h)
        if not torch.equal(got, want):
            bad = int((got != want).any(-1).nonzero()[0, 0]) if got.shape == want.shape else 0
            raise InterventionError(
                f"substitution at layer {layer}, row {int(rows[bad])}, position "
                f"{int(positions[bad])} did not land: the layer ran on another vector (max "
                f"|difference| {float((got.float() - want.float()).abs().max()):.3g}); every "
                "number of this experiment would be wrong, so it stops here")
        audit.checked += len(rows)
        seen.add(layer)
    return hook


@contextmanager
def substitute(layers, subs_per_row: list[list[Sub]], audit: Audit | None = None):
    """Write each row's substitutions into the residuals for the forward passes in the block; on
    leaving it, every substituted layer must have run on its vectors (see Audit)."""
    by_layer: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
    for row, subs in enumerate(subs_per_row):
        for s in subs:
            by_layer.setdefault(int(s.layer), []).append((row, int(s.position), s.vector))
    audit = Audit() if audit is None else audit
    seen: set[int] = set()
    writes, checks = {}, {}
    for layer, items in by_layer.items():
        rows = torch.tensor([r for r, _, _ in items], dtype=torch.long)
        positions = torch.tensor([p for _, p, _ in items], dtype=torch.long)
        vectors = torch.stack([v for _, _, v in items])
        writes[layer] = write_hook(rows, positions, vectors)
        checks[layer] = _read_back(layer, rows, positions, vectors, audit, seen)
    with _registered(layers, writes), _registered(layers, checks, post=True):
        yield
    missing = sorted(set(by_layer) - seen)
    if missing:
        raise InterventionError(f"substitutions at layers {missing} never reached their layer "
                                "(no forward pass ran them); the experiment's numbers would be "
                                "those of the clean run, so it stops here")
    audit.forwards += 1


def write_hook(rows: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor):
    """The pre-hook that writes `vectors` at (rows, positions) of the residual a layer receives."""
    def hook(module, args, kwargs):
        h = hidden_of(args, kwargs).clone()
        h[rows.to(h.device), positions.to(h.device)] = on_layer(vectors, h)
        return with_hidden(args, kwargs, h)
    return hook


class _Given(torch.nn.Module):
    """Stands in for every layer below the start: returns the residual given for the start."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states, *args, **kwargs):
        self.hidden = on_layer(self.hidden, hidden_states)  # a no-op after the first layer
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

