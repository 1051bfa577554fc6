"""Grid files (YAML or JSON): personas, tasks, baseline, template, markers, experiments."""
# A grid is validated completely before any model loads; every error names the file, the key
# and the fix. Its identity is its name (the file's stem) and the sha256 of its canonical JSON,
# so two runs on different files never mix. The paper's grids live in fixtures/grids/.
from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import yaml

from ..errors import GridError
from ..readfile import (GRID, Unreadable, checked, exists, expanded_size, read_text,
                        unique_pairs)
from ..verdicts import claims as registry
from ..verdicts.claims import EXPERIMENTS
from ..verdicts.kinds import Kind
from ..yamlfile import DuplicateKeyError, UniqueKeys, quote
from ..paths import GRID_DIR

DEFAULT_TEMPLATE = "As {persona}, {task}"
MAX_BYTES = GRID.limit  # a grid file, and the content its YAML aliases expand to, at most 1 MiB
# A template token: a literal brace pair, a {...} field, or a lone brace (an error).
_TOKEN = re.compile(r"\{\{|\}\}|\{[^{}]*\}|[{}]")
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
    template: str = DEFAULT_TEMPLATE
    markers: dict | None = None  # persona key -> marker list
    experiments: tuple[str, ...] = (Kind.SWEEP, Kind.HOST)
    sha256: str = ""
    source: str = ""  # the file it came from

    @property
    def key(self) -> str:
        """The grid's name in results, reports and expectations: name@hash."""
        return f"{self.name}@{self.sha256[:12]}"

    @cached_property
    def cells(self) -> tuple[Cell, ...]:
        return tuple(Cell(pk, tk, p, t) for pk, p in self.personas.items()
                     for tk, t in self.tasks.items())

    @property
    def design(self) -> dict:
        """Where each cell (in `cells` order) sits in the crossed design: persona_index and
        task_index, the positions of its persona and task keys in the grid. Taken from the grid,
        never parsed from cell ids (a key may hold '__'); every result records it."""
        return {"persona_index": tuple(i for i in range(len(self.personas))
                                       for _ in range(len(self.tasks))),
                "task_index": tuple(j for _ in range(len(self.personas))
                                    for j in range(len(self.tasks)))}

    def user_text(self, cell: Cell, condition: str) -> str:
        """The user message of a condition; 'bare' is the task alone, with no persona at all."""
        if condition == "bare":
            return cell.task
        persona = cell.persona if condition[0] == "X" else self.baseline_persona
        task = cell.task if condition[1] == "Y" else self.baseline_task
        return self.template.format(persona=persona, task=task)

    def not_run(self, claim: str) -> str | None:
        """Why `claim` cannot run on this grid (None: it runs)."""
        kind = registry.CLAIMS[claim].experiment
        return None if kind in self.experiments else \
            f"the grid runs {', '.join(self.experiments)}, not {kind}"


def _read(path: Path) -> dict:
    """The grid's data, read through lac's one reader (regular file, 1 MiB, UTF-8, aliases
    bounded); the grid keeps PyYAML's YAML 1.1, which its content hash was taken in."""
    where = str(path)
    try:
        text = read_text(path, GRID)
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=unique_pairs)
        else:
            data = yaml.load(text, Loader=UniqueKeys)
        checked(data, path, GRID)
    except Unreadable as exc:
        raise GridError(str(exc)) from None
    except (GridError, DuplicateKeyError) as exc:
        if str(exc).startswith(where):
            raise
        raise GridError(f"{where}: {exc}; every key may appear once in a mapping") from None
    except RecursionError:
        raise GridError(f"{where}: nested too deeply to read; a grid is a mapping of texts "
                        "and lists, a few levels deep") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise GridError(f"cannot read grid file {where}: {exc}") from None
    return data


def _texts(data: dict, key: str, where: str, least: int) -> dict:
    value = data.get(key)
    odd = next((k for k in value if not isinstance(k, str)), None) if isinstance(value, dict) \
        else None
    if odd is not None:  # YAML 1.1 reads yes/no/on/off/true as booleans, 1 as a number
        raise GridError(f"{where}: '{key}' has the key {quote(odd)}, a {type(odd).__name__}, not "
                        "text (YAML reads an unquoted yes, no, on, off or number as one); quote "
                        "it")
    if not isinstance(value, dict) or len(value) < least or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in value.items()):
        raise GridError(f"{where}: '{key}' must map at least {least} keys to non-empty texts")
    return dict(value)


def _check(data, where: str) -> tuple:
    if not isinstance(data, dict):
        raise GridError(f"{where}: expected a mapping with baseline, personas, tasks")
    unknown = set(data) - {"baseline", "template", "personas", "tasks", "markers", "experiments"}
    if unknown:
        raise GridError(f"{where}: unknown key {quote(sorted(unknown, key=str)[0])}; allowed: "
                        "baseline, template, personas, tasks, markers, experiments")
    base = _texts(data, "baseline", where, 2)
    if set(base) != {"persona", "task"}:
        raise GridError(f"{where}: 'baseline' must have exactly 'persona' and 'task'")
    personas, tasks = _texts(data, "personas", where, 2), _texts(data, "tasks", where, 2)
    if base["persona"] in personas.values() or base["task"] in tasks.values():
        raise GridError(f"{where}: the baseline persona and task must differ from the grid's own; "
                        "change 'baseline' or remove the duplicate")
    return base, personas, tasks, checked_template(data.get("template", DEFAULT_TEMPLATE), where)


def checked_template(template, where: str) -> str:
    """The template, if it holds {persona} and {task} once each and nothing else str.format would
    read: a format spec, conversion or attribute would change the texts, a lone brace fails."""
    rule = ("'template' must contain {persona} and {task} once each and no other field (no "
            "format spec ':...', no conversion '!r', no attribute or index; a literal brace is "
            "written {{ or }})")
    if not isinstance(template, str):
        raise GridError(f"{where}: {rule}; got {quote(template)}")
    fields = []
    for token in _TOKEN.finditer(template):
        text = token.group()
        if text in ("{{", "}}"):
            continue
        if text not in ("{persona}", "{task}"):
            what = f"a lone {text!r}" if text in ("{", "}") else f"the field {quote(text)}"
            raise GridError(f"{where}: {rule}; {what} at character {token.start()} of "
                            f"{quote(template)}")
        fields.append(text)
    if sorted(fields) != ["{persona}", "{task}"]:
        raise GridError(f"{where}: {rule}; got {quote(template)}")
    return template


def _rendered(template: str, base: dict, personas: dict, tasks: dict, where: str) -> None:
    """Render every cell and baseline pairing now, so no grid that loads fails when it runs."""
    for persona in (base["persona"], *personas.values()):
        for task in (base["task"], *tasks.values()):
            try:
                text = template.format(persona=persona, task=task)
            except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
                raise GridError(f"{where}: 'template' {quote(template)} does not render: "
                                f"{quote(str(exc))}; use {{persona}} and {{task}} only") from None
            if persona not in text or task not in text:
                raise GridError(f"{where}: 'template' {quote(template)} does not keep the persona "
                                f"and task texts whole; use {{persona}} and {{task}} only")


def _unique_ids(personas: dict, tasks: dict, where: str) -> None:
    """Cell ids (persona key + '__' + task key) name cells in results and expectations: two cells
    sharing one would silently lose one cell's data."""
    seen: dict[str, tuple[str, str]] = {}
    for p in personas:
        for t in tasks:
            other = seen.setdefault(f"{p}__{t}", (p, t))
            if other != (p, t):
                raise GridError(
                    f"{where}: the cells persona {quote(other[0])} x task {quote(other[1])} and "
                    f"persona {quote(p)} x task {quote(t)} both have the id {quote(f'{p}__{t}')} "
                    "(persona key + '__' + task key); rename a key so that no two cells share an "
                    "id, e.g. without '__' in persona or task keys")


def _markers(data, personas, where: str) -> dict | None:
    markers = data.get("markers")
    if markers is None:
        return None
    if not isinstance(markers, dict) or set(markers) - set(personas):
        extra = sorted(set(markers) - set(personas), key=str) if isinstance(markers, dict) \
            else markers
        raise GridError(f"{where}: 'markers' may only list the grid's personas; not "
                        f"{quote(extra)}")
    for k, words in markers.items():
        if not isinstance(words, list) or not words or not all(
                isinstance(w, str) and w.strip() for w in words):
            name = k if len(k) <= 40 else k[:37] + "..."
            raise GridError(f"{where}: markers.{name} must be a non-empty list of non-empty "
                            "strings")
    return markers


def load_grid(path: Path | str) -> Grid:
    """Read and validate one grid file; a bad one raises GridError naming file, key and fix."""
    path = Path(path)
    data = _read(path)
    base, personas, tasks, template = _check(data, str(path))
    _unique_ids(personas, tasks, str(path))
    _rendered(template, base, personas, tasks, str(path))
    markers = _markers(data, personas, str(path))
    complete = markers is not None and set(markers) == set(personas)
    default = EXPERIMENTS if complete else tuple(k for k in EXPERIMENTS if k != Kind.MARKERS)
    experiments = data.get("experiments", default)
    if not isinstance(experiments, list | tuple) or not experiments or not all(
            isinstance(e, str) and e in EXPERIMENTS for e in experiments):
        raise GridError(f"{path}: 'experiments' must list some of {', '.join(EXPERIMENTS)}, "
                        f"got {quote(experiments)}")
    if Kind.MARKERS in experiments and not complete:
        raise GridError(f"{path}: experiment 'markers' needs a marker list for every persona; "
                        f"missing for {quote(sorted(set(personas) - set(markers or {})))}")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Grid(path.stem, personas, tasks, base["persona"], base["task"], template, markers,
                tuple(experiments), hashlib.sha256(canonical.encode()).hexdigest(), str(path))


def paper_grid(name: str, sha256: str) -> str | None:
    """The paper's grid ("short", "long", "markers") that a run's grid is, by content: a user's
    grid that only shares a name is compared with nothing of the paper's."""
    for paper in ("short", "long", "markers"):
        if name == paper and sha256 == _shipped_sha256(paper):
            return paper
    return None


@lru_cache(maxsize=None)
def _shipped_sha256(name: str) -> str:
    return load_grid(GRID_DIR / f"{name}.yaml").sha256


def resolve_grid(name_or_path: str) -> Grid:
    """A grid by the name of a file in fixtures/grids/ (short, long, markers, example) or a path."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml", ".json"):
        if not exists(path, "--lac-grid"):
            raise GridError(f"grid file {path} does not exist; pass an existing .yaml or .json "
                            "file")
        return load_grid(path)
    known = sorted(p.stem for p in GRID_DIR.glob("*.yaml"))
    if name_or_path not in known:
        close = difflib.get_close_matches(name_or_path, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise GridError(f"unknown grid {quote(name_or_path)}: {hint}not one of {', '.join(known)} "
                        "and not a .yaml / .json file; pass --lac-grid NAME or --lac-grid PATH "
                        "(python -m lac_core.list shows them)")
    return load_grid(GRID_DIR / f"{name_or_path}.yaml")
