"""What the engine takes and hands back: the model it runs (a Protocol), a continuation of kept
rows, a prefill request, and its results and counters."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import torch

from .kvcache import State


@runtime_checkable
class ModelLike(Protocol):
    """What the engine reads of a loaded model (models.LoadedModel is one)."""

    model: torch.nn.Module  # a transformers causal LM
    tokenizer: object  # its pad and eos token ids are read

    @property
    def layers(self) -> torch.nn.ModuleList: ...  # the decoder layers, hooked and swapped

    @property
    def n_layers(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def device(self) -> torch.device: ...  # where input ids go

    @property
    def dtype(self) -> torch.dtype: ...


@dataclass(frozen=True)
class Continuation:
    """Rows that continue a kept batch: row i continues the first `column` cached columns of
    row `rows[i]` of `state` (rows may repeat)."""

    state: State
    rows: tuple[int, ...]
    column: int

    def __post_init__(self):
        object.__setattr__(self, "rows", tuple(self.rows))

    def take(self, indices) -> "Continuation":
        """The continuation of rows `indices` only (a chunk of them)."""
        return replace(self, rows=tuple(self.rows[i] for i in indices))


@dataclass(frozen=True)
class PrefillRequest:
    """One `Engine.prefill` call, as it travels through chunking and prefix sharing."""

    prompts: list  # token ids per row
    subs: list | None = None  # [row] -> [Sub], positions counted in the row's prompt
    after: Continuation | None = None
    start_layer: int = 0  # run only the layers from here, fed `hidden`
    hidden: torch.Tensor | None = None  # [rows, length, d]: the residual entering start_layer
    keep: int = 1  # log-probs (or KLs) of the last `keep` positions
    tail: int = 0  # capture the residuals entering every layer at the last `tail` positions
    keep_state: bool = False
    width: int = 0  # columns of the padded rows (at least the longest prompt)
    against: list | None = None  # [row] -> [keep, V] float32 log-probs to score against
    in_place: bool = False  # read continued columns where they are (kvcache.Shared)
    group: int = 1  # rows are split into chunks in whole groups


@dataclass
class Cost:
    """Work pushed through the model: token positions (rows x length per call), token-layers
    (positions x decoder layers actually run) and calls."""

    tokens: int = 0
    layer_tokens: int = 0
    calls: int = 0

    def add(self, rows: int, length: int, layers: int) -> None:
        self.tokens += rows * length
        self.layer_tokens += rows * length * layers
        self.calls += 1


@dataclass
class Work:
    """How far an experiment is, in token-layers (positions x decoder layers run): what its
    forward calls have done against what it planned. Time follows token-layers, not the count
    of steps or groups (a long prompt's pass outweighs many short windows), so the time left
    is told from these. Engines of one experiment share one Work."""

    progress: object = None  # a progress.Progress, told the fraction done
    planned: int = 0
    done: int = 0

    def plan(self, layer_tokens: int) -> None:
        self.planned, self.done = max(int(layer_tokens), 1), 0

    def add(self, layer_tokens: int) -> None:
        self.done += layer_tokens
        if self.progress is not None and self.planned:
            self.progress.tick(min(self.done / self.planned, 0.99))


@dataclass
class Prefill:
    state: State | None  # kept when asked for
    logprobs: torch.Tensor | None  # [rows, keep, V] float32, the last `keep` positions
    residuals: torch.Tensor | None  # [rows, n_layers, tail, d] float32, the captured tail
    kl: torch.Tensor | None = None  # [rows] float64: KL(against[row] || the row's last `keep`)


@dataclass
class Decoded:
    tokens: list[list[int]]  # per row; cut after EOS when stopping at EOS
    logprobs: torch.Tensor | None = None  # [rows, steps, V] float32: step k predicts token k
    residuals: torch.Tensor | None = None  # [rows, n_layers, k, d]: captured tail, then fed tokens
    state: State | None = None
