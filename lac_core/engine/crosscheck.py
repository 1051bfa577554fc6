"""Capture and substitution checked against paths that share no code with hooks.py: the model's
own `output_hidden_states`, and a write made by a separate hook on the output of the layer below.
A bug in the hooks (a capture scaled, read a layer or a position off, a write that lands in a copy,
one position on, or not at all, with its read-back moved alike) cannot repeat itself here."""
# The one place besides hooks.py that touches a layer: on purpose, written apart from it (no
# helper of hooks.py is used). `hidden_states[l]` is the residual entering decoder layer l
# (entry 0 the embeddings, as the model scales them); the last entry comes after the final norm
# and enters no layer, so it is never compared. The same single-row forward through the same
# kernels gives the same bits: `capture` and `substitution` demand equality (tolerance 0).
# transformers records hidden states with forward hooks of its own on the decoder layers,
# installed on the first such call and inert in every other forward: no number changes.
from __future__ import annotations

import torch

from ..errors import CrossCheckError


def own_hidden_states(lm, ids: list[int]) -> torch.Tensor:
    """[n_layers, seq, d] float32: the residual entering each decoder layer of one plain forward
    of `ids` (no lac hook), as the model's `output_hidden_states` reports it."""
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([list(ids)], device=lm.device),
                       output_hidden_states=True, use_cache=False, logits_to_keep=1)
    states = out.hidden_states
    if len(states) != lm.n_layers + 1:
        raise CrossCheckError(f"the model reports {len(states)} hidden states for "
                              f"{lm.n_layers} decoder layers (expected {lm.n_layers + 1}): lac "
                              "cannot check its captures on this model family", "hidden states")
    return torch.stack([h[0].detach().float().cpu() for h in states[: lm.n_layers]])


def _replacing_output(position: int, vector: torch.Tensor):
    """A forward hook on layer l - 1 whose output (the residual entering layer l) holds `vector`
    at `position`: hooks.substitute's write, made another way."""
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[0, position] = vector.to(device=hidden.device, dtype=hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
    return hook


def own_substituted(lm, ids: list[int], position: int, vectors: dict, keep: int) -> torch.Tensor:
    """[keep, V] float32 log-probs of the last `keep` positions of `ids`, the residual entering
    each layer l (>= 1) of `vectors` (layer -> vector) at `position` replaced by its vector through
    the output of layer l - 1."""
    if not all(1 <= layer < lm.n_layers for layer in vectors):
        raise ValueError(f"layers must be in 1..{lm.n_layers - 1}, got {sorted(vectors)}")
    n, handles = len(ids), []
    try:
        for layer, vector in vectors.items():
            handles.append(lm.layers[layer - 1].register_forward_hook(
                _replacing_output(position, vector)))
        with torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([list(ids)], device=lm.device),
                              attention_mask=torch.ones(1, n, dtype=torch.long, device=lm.device),
                              position_ids=torch.arange(n, device=lm.device)[None],
                              use_cache=False, logits_to_keep=torch.arange(n - keep, n)).logits
    finally:
        for handle in handles:
            handle.remove()
    return torch.log_softmax(logits[0].float(), dim=-1).cpu()


def worst(got: torch.Tensor, want: torch.Tensor) -> tuple[float, tuple[int, ...]]:
    """The largest relative difference |got - want| / |want| over the last axis (vectors), and
    the index of its vector: 0.0 only where every bit agrees."""
    diff = (got.float() - want.float()).norm(dim=-1) / want.float().norm(dim=-1).clamp_min(1e-30)
    at = int(diff.flatten().argmax())
    return float(diff.flatten()[at]), tuple(int(i) for i in torch.unravel_index(
        torch.tensor(at), diff.shape))


def expect_close(check: str, got: torch.Tensor, want: torch.Tensor, tolerance: float,
                 where) -> float:
    """The worst relative difference of `got` against `want` (see `worst`); over `tolerance` (or,
    at tolerance 0, any bit apart) it stops the experiment, naming `check` and `where(index)`,
    a (text, layer, position) for the worst vector."""
    value, at = worst(got, want)
    exact_miss = tolerance == 0 and not torch.equal(got.float(), want.float())
    if value > tolerance or exact_miss:
        text, layer, position = where(at)
        raise CrossCheckError(
            f"{check} failed at {text}: relative difference {value:.3g} > tolerance "
            f"{tolerance:g} against a path sharing no code with lac's hooks; every number of this "
            "experiment would rest on residuals lac did not read or write where it says, so it "
            "stops here", check, layer, position)
    return value
