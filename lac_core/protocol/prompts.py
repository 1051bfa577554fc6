"""The 2x2 prompt sets rendered and tokenized, probe positions, layer choices (no model calls)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import NoChatTemplateError, TokenizationError, UsageError
from .templates import FIXES, MODEL, ChatTemplate

CONDITIONS = ("BB", "XB", "BY", "XY")
PROBES = ("p_user_last", "p_last", "g1", "g2")
PROMPT_PROBES = ("p_user_last", "p_last")  # probes inside the prompt; g1, g2 are generated tokens
N_REF = 12  # greedy reference tokens r[0:12]
WINDOW = 10  # teacher-forced KL window length
WINDOW_OFFSET = {"p_user_last": 0, "p_last": 0, "g1": 1, "g2": 2}  # window start = p_last + offset
FORCED = 2  # g1, g2 exist in every condition: the XY reference's r[0:2] is appended to each


@dataclass(frozen=True)
class Rendered:
    """One user message rendered with the chat template and tokenized, with its probe positions."""

    ids: tuple[int, ...]
    p_user_last: int
    p_last: int

    def position(self, probe: str) -> int:
        """Index of a probe in prompt + r (g1, g2: the first and second generated positions)."""
        return {"p_user_last": self.p_user_last, "p_last": self.p_last,
                "g1": self.p_last + 1, "g2": self.p_last + 2}[probe]


def window_start(rendered: Rendered, probe: str) -> int:
    """First position scored: r[0:10] for p_last and p_user_last, r[1:11] g1, r[2:12] g2."""
    return rendered.p_last + WINDOW_OFFSET[probe]


def _template_ids(tokenizer, text: str, template: ChatTemplate, header: bool) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             chat_template=template.text,
                                             add_generation_prompt=header)
    # The template carries BOS where the model wants it; adding special tokens would double it.
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def _raw_ids(tokenizer, text: str) -> list[int]:
    """The user text alone, after the tokenizer's BOS when it adds one (nothing else it adds)."""
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    added = tokenizer(text)["input_ids"]
    return [bos] + plain if bos is not None and added[:1] == [bos] else plain


def render(tokenizer, text: str, template: ChatTemplate | None = MODEL) -> Rendered:
    """Render a single user message; audit BOS and the user-turn prefix. In raw mode the prompt
    is the text itself and p_user_last = p_last."""
    template = template or MODEL  # None: the model's own
    if template.raw:
        ids = _raw_ids(tokenizer, text)
        return Rendered(ids=tuple(ids), p_user_last=len(ids) - 1, p_last=len(ids) - 1)
    if template.text is None and not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError(f"the tokenizer has no chat template; pass {FIXES}")
    full = _template_ids(tokenizer, text, template, True)
    user = _template_ids(tokenizer, text, template, False)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(full) > 1 and full[0] == bos and full[1] == bos:
        raise TokenizationError(f"double BOS at the start of {text[:40]!r}: every position would "
                                "shift by one")
    if full[: len(user)] != user or len(user) >= len(full):
        raise TokenizationError("the template without the generation header is not a strict "
                                "prefix of the template with it, so p_user_last is undefined for "
                                f"{text[:40]!r}")
    return Rendered(ids=tuple(full), p_user_last=len(user) - 1, p_last=len(full) - 1)


def swept_layers(n_layers: int, spec: tuple | None = None) -> tuple[int, ...]:
    """The layers a sweep measures: the paper's depth fractions by default; else each entry of
    `spec` is a layer index (int) or a depth fraction (float, round(f * n)). The user's layers
    must land in 1..n-1 (layer 0's input is the embedding output, where dX = dY = 0 at the last
    token, so every KL there is vacuously 0) and on distinct layers: nothing is clipped or
    dropped in silence."""
    if spec is None:
        return layer_fractions_to_layers(n_layers)
    given = ",".join(map(str, spec))
    layers = {}
    for x in spec:
        layer = x if isinstance(x, int) else round(x * n_layers)
        if not 1 <= layer <= n_layers - 1:
            raise UsageError(f"--lac-layers {given}: {x} is layer {layer}, out of range for a "
                             f"model with {n_layers} layers: pass layer indices in "
                             f"1..{n_layers - 1}"
                             " or depth fractions that land there (layer 0's input is the "
                             "embedding output: no persona or task difference at the last token)")
        if layer in layers:
            raise UsageError(f"--lac-layers {given}: {layers[layer]} and {x} are both layer "
                             f"{layer} "
                             f"on a model with {n_layers} layers; pass each layer once")
        layers[layer] = x
    return tuple(layers)


def layer_fractions_to_layers(n_layers: int, fractions=(0.25, 0.40, 0.55, 0.70, 0.85)) -> tuple:
    """round(f * n) clipped to [1, n-1], duplicates dropped, order kept (Python's round)."""
    return tuple(dict.fromkeys(min(max(round(f * n_layers), 1), n_layers - 1) for f in fractions))


def mid_layer(n_layers: int) -> int:
    return min(max(round(0.55 * n_layers), 1), n_layers - 1)


PAPER_LAYER_SETS = ((14,), (10, 12, 14), (10, 12, 14, 16, 18), (10, 12, 14, 16, 18, 20, 22),
                    (6, 8, 10, 12, 14, 16, 18, 20, 22))


def multilayer_sets(n_layers: int) -> tuple[tuple[int, ...], ...]:
    """The paper's Gemma (26-layer) layer sets mapped to this depth: l -> round(l / 26 * n)."""
    return tuple(tuple(dict.fromkeys(min(max(round(layer / 26 * n_layers), 0), n_layers - 1)
                                     for layer in s)) for s in PAPER_LAYER_SETS)
