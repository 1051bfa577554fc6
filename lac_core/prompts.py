"""Grids, the 2x2 prompt sets, chat-template rendering and probe positions. No model calls."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .errors import GridError, NoChatTemplateError, TokenizationError
from .settings import FIXTURES

CONDITIONS = ("BB", "XB", "BY", "XY")
PROBES = ("p_user_last", "p_last", "g1", "g2")
PROMPT_PROBES = ("p_user_last", "p_last")  # probes inside the prompt; g1, g2 are generated tokens
N_REF = 12  # greedy reference tokens r[0:12]
WINDOW = 10  # teacher-forced KL window length


@dataclass(frozen=True)
class Cell:
    persona_key: str
    task_key: str
    persona: str
    task: str

    @property
    def id(self) -> str:
        return f"{self.persona_key}__{self.task_key}"


@dataclass(frozen=True)
class Grid:
    name: str
    personas: dict
    tasks: dict
    baseline_persona: str
    baseline_task: str
    template: str
    markers: dict  # persona key -> marker list (may be empty for grids without markers)

    @cached_property
    def cells(self) -> tuple[Cell, ...]:
        return tuple(Cell(pk, tk, p, t) for pk, p in self.personas.items()
                     for tk, t in self.tasks.items())

    def user_text(self, cell: Cell, condition: str) -> str:
        """The user message of a condition; 'bare' is the task alone, with no persona at all."""
        if condition == "bare":
            return cell.task
        persona = cell.persona if condition[0] == "X" else self.baseline_persona
        task = cell.task if condition[1] == "Y" else self.baseline_task
        return self.template.format(persona=persona, task=task)


def _need(obj, key, kind, where):
    if not isinstance(obj, dict) or key not in obj:
        raise GridError(f"{where}: missing key {key!r}; follow fixtures/grids.json")
    if not isinstance(obj[key], kind):
        raise GridError(f"{where}.{key}: expected {kind.__name__}, got {type(obj[key]).__name__}")
    return obj[key]


def _texts(obj, key, where) -> dict:
    value = _need(obj, key, dict, where)
    if not value or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                            for k, v in value.items()):
        raise GridError(f"{where}.{key}: must be a non-empty mapping of key -> non-empty text")
    return dict(value)


def load_grids(path: Path | str = FIXTURES / "grids.json") -> dict[str, Grid]:
    """Read and validate a grid file; a malformed one raises GridError naming the bad entry."""
    path = where = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GridError(f"cannot read grid file {path}: {exc}") from exc
    base = _need(data, "baseline", dict, where)
    template = _need(data, "template", str, where)
    if "{persona}" not in template or "{task}" not in template:
        raise GridError(f"{where}.template must contain {{persona}} and {{task}}, got {template!r}")
    markers, grids = _need(data, "markers", dict, where), {}
    for name, g in _need(data, "grids", dict, where).items():
        gw = f"{where}.grids.{name}"
        personas, tasks = _texts(g, "personas", gw), _texts(g, "tasks", gw)
        grid_markers = {k: markers[k] for k in personas if k in markers}
        if name == "markers" and set(personas) - set(grid_markers):
            raise GridError(f"{gw}: personas {sorted(set(personas) - set(grid_markers))} have no "
                            "marker list under 'markers'; add one")
        for k, words in grid_markers.items() if name == "markers" else ():
            if not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise GridError(f"{where}.markers.{k}: must be a non-empty list of non-empty "
                                "strings")
        grids[name] = Grid(name, personas, tasks, _need(base, "persona", str, f"{where}.baseline"),
                           _need(base, "task", str, f"{where}.baseline"), template, grid_markers)
    return grids


# ---------------------------------------------------------------- rendering and positions

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


def _template_ids(tokenizer, text: str, add_generation_prompt: bool) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    # The template carries BOS where the model wants it; adding special tokens would double it.
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def render(tokenizer, text: str) -> Rendered:
    """Render a single user message; audit BOS and the user-turn prefix."""
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError("the tokenizer has no chat template; the protocol needs the "
                                  "model's own")
    full = _template_ids(tokenizer, text, True)
    user = _template_ids(tokenizer, text, False)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(full) > 1 and full[0] == bos and full[1] == bos:
        raise TokenizationError(f"double BOS at the start of {text[:40]!r}: every position would "
                                "shift by one")
    if full[: len(user)] != user or len(user) >= len(full):
        raise TokenizationError("the template without the generation header is not a strict "
                                "prefix of the template with it, so p_user_last is undefined for "
                                f"{text[:40]!r}")
    return Rendered(ids=tuple(full), p_user_last=len(user) - 1, p_last=len(full) - 1)


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
