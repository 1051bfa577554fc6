"""Grid files (YAML or JSON): personas, tasks, baseline, template, markers, experiments."""
# A grid is validated completely before any model loads; every error names the file, the key
# and the fix. Its identity is its name (the file's stem) and the sha256 of its canonical JSON,
# so two runs on different files never mix. The paper's grids live in fixtures/grids/.
from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from .errors import GridError
from .settings import FIXTURES

GRID_DIR = FIXTURES / "grids"
EXPERIMENTS = {"sweep": ("C1", "C1L", "C2", "C5", "C6"), "markers": ("C3", "C3R"), "host": ("C4",)}
DEFAULT_TEMPLATE = "As {persona}, {task}"


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
    experiments: tuple[str, ...] = ("sweep", "host")
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

    def user_text(self, cell: Cell, condition: str) -> str:
        """The user message of a condition; 'bare' is the task alone, with no persona at all."""
        if condition == "bare":
            return cell.task
        persona = cell.persona if condition[0] == "X" else self.baseline_persona
        task = cell.task if condition[1] == "Y" else self.baseline_task
        return self.template.format(persona=persona, task=task)

    def not_run(self, claim: str) -> str | None:
        """Why `claim` cannot run on this grid (None: it runs)."""
        kind = next(k for k, claims in EXPERIMENTS.items() if claim in claims)
        return None if kind in self.experiments else \
            f"the grid runs {', '.join(self.experiments)}, not {kind}"


class _UniqueKeys(yaml.SafeLoader):
    """A YAML loader that refuses a key repeated in one mapping instead of keeping the last."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise GridError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _json_pairs(pairs):
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise GridError(f"duplicate key {k!r}")
    return dict(pairs)


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
        if path.suffix == ".json":
            return json.loads(text, object_pairs_hook=_json_pairs)
        return yaml.load(text, Loader=_UniqueKeys)
    except GridError as exc:
        raise GridError(f"{path}: {exc}; every key may appear once in a mapping") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise GridError(f"cannot read grid file {path}: {exc}") from None


def _texts(data: dict, key: str, where: str, least: int) -> dict:
    value = data.get(key)
    if not isinstance(value, dict) or len(value) < least or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in value.items()):
        raise GridError(f"{where}: '{key}' must map at least {least} keys to non-empty texts")
    return dict(value)


def _check(data, where: str) -> tuple:
    if not isinstance(data, dict):
        raise GridError(f"{where}: expected a mapping with baseline, personas, tasks")
    unknown = set(data) - {"baseline", "template", "personas", "tasks", "markers", "experiments"}
    if unknown:
        raise GridError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: baseline, "
                        "template, personas, tasks, markers, experiments")
    base = _texts(data, "baseline", where, 2)
    if set(base) != {"persona", "task"}:
        raise GridError(f"{where}: 'baseline' must have exactly 'persona' and 'task'")
    personas, tasks = _texts(data, "personas", where, 2), _texts(data, "tasks", where, 2)
    if base["persona"] in personas.values() or base["task"] in tasks.values():
        raise GridError(f"{where}: the baseline persona and task must differ from the grid's own; "
                        "change 'baseline' or remove the duplicate")
    template = data.get("template", DEFAULT_TEMPLATE)
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None] \
        if isinstance(template, str) else None
    if fields is None or sorted(fields) != ["persona", "task"]:
        raise GridError(f"{where}: 'template' must contain {{persona}} and {{task}} once each "
                        f"and no other field, got {template!r}")
    return base, personas, tasks, template


def _markers(data, personas, where: str) -> dict | None:
    markers = data.get("markers")
    if markers is None:
        return None
    if not isinstance(markers, dict) or set(markers) - set(personas):
        extra = sorted(set(markers) - set(personas)) if isinstance(markers, dict) else markers
        raise GridError(f"{where}: 'markers' may only list the grid's personas; not {extra}")
    for k, words in markers.items():
        if not isinstance(words, list) or not words or not all(
                isinstance(w, str) and w.strip() for w in words):
            raise GridError(f"{where}: markers.{k} must be a non-empty list of non-empty strings")
    return markers


def load_grid(path: Path | str) -> Grid:
    """Read and validate one grid file; a bad one raises GridError naming file, key and fix."""
    path = Path(path)
    data = _read(path)
    base, personas, tasks, template = _check(data, str(path))
    markers = _markers(data, personas, str(path))
    complete = markers is not None and set(markers) == set(personas)
    default = ("sweep", "markers", "host") if complete else ("sweep", "host")
    experiments = data.get("experiments", default)
    if not isinstance(experiments, list | tuple) or not experiments or \
            set(experiments) - set(EXPERIMENTS):
        raise GridError(f"{path}: 'experiments' must list some of {', '.join(EXPERIMENTS)}, "
                        f"got {experiments!r}")
    if "markers" in experiments and not complete:
        raise GridError(f"{path}: experiment 'markers' needs a marker list for every persona; "
                        f"missing for {sorted(set(personas) - set(markers or {}))}")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Grid(path.stem, personas, tasks, base["persona"], base["task"], template, markers,
                tuple(experiments), hashlib.sha256(canonical.encode()).hexdigest(), str(path))


def resolve_grid(name_or_path: str) -> Grid:
    """A grid by the name of a file in fixtures/grids/ (short, long, markers, example) or a path."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise GridError(f"grid file {path} does not exist; pass an existing .yaml or .json "
                            "file")
        return load_grid(path)
    known = sorted(p.stem for p in GRID_DIR.glob("*.yaml"))
    if name_or_path not in known:
        raise GridError(f"unknown grid {name_or_path!r}: not one of {', '.join(known)} and not a "
                        ".yaml / .json file; pass --grid NAME or --grid PATH")
    return load_grid(GRID_DIR / f"{name_or_path}.yaml")
