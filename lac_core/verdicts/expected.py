"""Expectations per model (fixtures/expected/<model>.yaml): verdicts, cell findings, baselines."""
# A model's file holds one section per setup (dtype and chat template) and grid (name@hash):
# expectations recorded under one key are never compared with a run under another. A verdict
# can stay the same while its deciding numbers move; a library or model upgrade that moves one
# beyond its tolerance fails the session with a message naming the quantity.
from __future__ import annotations

import math
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .. import locks
from ..errors import FixtureError, LacError, UsageError
from ..readfile import EXPECTATIONS, Unreadable, read_text
from ..yamlfile import load_yaml
from .rules import FAILS, HOLDS, INCONCLUSIVE

# (absolute floor, relative) tolerance by the kind of number
TOLERANCES = {"cos": (0.01, 0.0), "count": (1.0, 0.0), "ratio": (0.0, 0.15),
              "default": (0.002, 0.10)}
SKIP = {"layer", "shallowest", "deepest", "informative_layers", "bound"}  # where, not a measure
HEADER = "# Written by lac (a pytest run with --lac-update-baselines); review before committing.\n"
FIELDS = ("verdicts", "notes", "cell_findings", "baselines")
LOCK = locks.LOCK
KERNELS = re.compile(r" kernels=(\S+)")  # the kernel family in a setup key (Session.setup)


def file_for(model: str, directory: Path) -> Path:
    """The expectations file of a model identity (characters unsafe in file names replaced)."""
    return Path(directory) / (re.sub(r"[^\w.@-]", "_", model) + ".yaml")


@dataclass
class Expectations:
    model: str
    setups: dict = field(default_factory=dict)  # setup -> grid key -> {field: ...}
    document: object = None  # the file as ruamel read it (comments kept), when updating one

    def section(self, setup: str, grid: str) -> dict | None:
        return self.setups.get(setup, {}).get(grid)

    def other_kernels(self, setup: str, grid: str) -> list[str]:
        """The kernel families (placement.kernels) this grid was recorded for in a setup that
        differs from `setup` only in them."""
        return sorted(m.group(1) if (m := KERNELS.search(other)) else
                      "a section with no kernel family (recorded before lac kept them apart)"
                      for other, grids in self.setups.items() if other != setup
                      and KERNELS.sub("", other) == KERNELS.sub("", setup) and grid in grids)

    def verdict(self, setup: str, grid: str, claim: str) -> str | None:
        return (self.section(setup, grid) or {}).get("verdicts", {}).get(claim)

    def cell_fails(self, setup: str, grid: str, check: str, cell: str) -> bool:
        return cell in (self.section(setup, grid) or {}).get("cell_findings", {}).get(check, [])

    def record(self, setup: str, grid: str, verdicts: dict, cells: dict) -> list[str]:
        """Take one grid's verdicts (claim -> Verdict), per-cell checks (check -> (cells that ran,
        cells that failed)) and deciding numbers as its expectations; what did not run is kept,
        and so is every tolerance already set (by hand or not): only values are rewritten. The
        changes, one line each."""
        sec = self.setups.setdefault(setup, {}).setdefault(grid, {})
        for name in FIELDS:
            sec.setdefault(name, {})
        changes = []
        for claim, v in verdicts.items():
            if sec["verdicts"].get(claim) != v.status:
                changes.append(f"{claim}: {sec['verdicts'].get(claim, 'no verdict')} -> {v.status}")
            sec["verdicts"][claim] = v.status
            sec["notes"][claim] = v.explain()
            if v.status == HOLDS:
                del sec["notes"][claim]
        for check, (ran, failed) in cells.items():
            before = list(sec["cell_findings"].get(check, []))
            kept = set(before) - set(ran)
            sec["cell_findings"][check] = sorted(kept | set(failed))
            if sorted(before) != sec["cell_findings"][check]:
                changes.append(f"cells failing {check}: {sorted(before)} -> "
                               f"{sec['cell_findings'][check]}")
        for key, fresh in make_baselines(quantities(verdicts)).items():
            base = sec["baselines"].get(key)
            if base is None:
                sec["baselines"][key] = fresh
                changes.append(f"{key}: new baseline {fresh['value']}")
            elif base["value"] != fresh["value"]:
                changes.append(f"{key}: {base['value']} -> {fresh['value']} (tolerance "
                               f"{base['tolerance']} kept)")
                base["value"] = fresh["value"]
        return changes


def claim_entry(section: dict | None, claim: str, checks=()) -> dict:
    """A claim's entry in one section: its verdict, note, baselines ('claim/part/number') and
    its cell checks' findings (`checks`: their names); empty when the section holds none."""
    sec = section or {}
    entry = {"verdicts": {k: v for k, v in sec.get("verdicts", {}).items() if k == claim},
             "notes": {k: v for k, v in sec.get("notes", {}).items() if k == claim},
             "cell_findings": {k: v for k, v in sec.get("cell_findings", {}).items()
                               if k in checks},
             "baselines": {k: v for k, v in sec.get("baselines", {}).items()
                           if k.split("/", 1)[0] == claim}}
    return entry if any(entry.values()) else {}


def compose(layers, claims: dict, grid: str, checks: dict) -> dict | None:
    """The section a run on `grid` is compared with, put together claim by claim. `claims` maps
    each claim to the setup its experiment reads (Session.setup), `checks` each claim to its
    cell checks' names; `layers` are a model's expectations, the user's folder first, then the
    ones lac ships. For each (setup, grid, claim) the first layer holding the claim's entry gives
    all of it (verdict, note, baselines, cell findings): the user's entry wins, the shipped one
    fills what the user's lacks. None when no layer holds an entry of any claim."""
    out, found = {name: {} for name in FIELDS}, False
    for claim, setup in claims.items():
        entry = next((e for exp in layers if (e := claim_entry(
            exp.section(setup, grid), claim, checks.get(claim, ())))), {})
        for name, values in entry.items():
            out[name].update(values)
        found = found or bool(entry)
    return out if found else None


def _problem(raw, model: str) -> str | None:
    """What is wrong with a parsed expectations file (None: nothing), as 'where: what'."""
    if not isinstance(raw, dict) or set(raw) - {"model", "setups"}:
        return "top level: a mapping with 'model' and 'setups' only"
    if raw.get("model") != model:
        return (f"model: {str(raw.get('model'))[:80]!r}, but the file is read for {model!r} (a "
                "copy of another model's expectations?)")
    setups = raw.get("setups") or {}
    if not isinstance(setups, dict):
        return "setups: a mapping of setup -> grid -> section"
    for setup, grids in setups.items():
        if not isinstance(grids, dict):
            return f"setups.{setup}: a mapping of grid -> section"
        for grid, sec in grids.items():
            where = f"setups.{setup}.{grid}"
            if not isinstance(sec, dict) or set(sec) - set(FIELDS):
                return f"{where}: a mapping of {', '.join(FIELDS)}"
            for name in FIELDS:
                if not isinstance(sec.get(name, {}), dict):
                    return f"{where}.{name}: a mapping"
            for claim, status in sec.get("verdicts", {}).items():
                if status not in (HOLDS, FAILS, INCONCLUSIVE):
                    return (f"{where}.verdicts.{claim}: {str(status)[:40]!r}; use HOLDS, FAILS or "
                            "INCONCLUSIVE")
            for check, cells in sec.get("cell_findings", {}).items():
                if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
                    return f"{where}.cell_findings.{check}: a list of cell ids"
            for key, base in sec.get("baselines", {}).items():
                if not (isinstance(base, dict) and set(base) == {"value", "tolerance"} and all(
                        isinstance(base[k], (int, float)) and not isinstance(base[k], bool)
                        and math.isfinite(base[k]) for k in base) and base["tolerance"] >= 0):
                    return (f"{where}.baselines.{key}: {{value: <number>, tolerance: <number >= "
                            "0>}")
    return None


def load(model: str, directory: Path) -> Expectations | None:
    """None when the model has no expectations yet (then every claim is expected to hold). The
    file is checked whole, so a damaged one stops the run at start, not in every test."""
    path = file_for(model, directory)
    if not os.path.lexists(path):
        return None
    try:
        raw = load_yaml(path, EXPECTATIONS)
    except (OSError, LacError) as exc:
        why = exc.what if isinstance(exc, Unreadable) else str(exc)  # without the file's name
        raise FixtureError(f"{path} cannot be read as expectations ({why[:300]}); fix it, or "
                           "move it away and record it again with --lac-update-baselines") \
            from None
    why = _problem(raw, model)
    if why:
        raise FixtureError(f"{path}: {why}; fix it, or move it away and record it again with "
                           "--lac-update-baselines")
    return Expectations(model, raw.get("setups") or {})


def _yaml():
    """ruamel's round-trip YAML: comments and layout of a hand-edited file survive a rewrite;
    every number is written so that it reads back as the same float (ExactFloats)."""
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.width, rt.allow_duplicate_keys = 120, False
    rt.Representer = _exact_floats()
    return rt


@lru_cache(maxsize=1)
def _exact_floats():
    """ruamel rewrites a float it read in exponent form from the digits it parsed and can lose the
    last one (2.969219123946633e+16 came back as ...632e+16, in a third of such numbers): each
    re-recording would move kept values and tolerances. A number is written as it was read when
    that reads back exactly, else as Python's shortest exact form."""
    from ruamel.yaml.representer import RoundTripRepresenter
    from ruamel.yaml.scalarfloat import ScalarFloat

    class ExactFloats(RoundTripRepresenter):
        def represent_scalar_float(self, data):
            node = super().represent_scalar_float(data)
            try:
                exact = float(node.value.replace("_", "")) == float(data)
            except ValueError:  # .inf, .nan: not numbers lac keeps (load refuses them)
                exact = True
            return node if exact else self.represent_float(float(data))

    ExactFloats.add_representer(ScalarFloat, ExactFloats.represent_scalar_float)
    return ExactFloats


def read_for_update(model: str, directory: Path) -> Expectations:
    """The model's expectations as the file holds them, comments and all (a fresh one if none),
    checked whole first (load)."""
    path = file_for(model, directory)
    if load(model, directory) is None:
        return Expectations(model)
    data = _yaml().load(read_text(path, EXPECTATIONS))
    if data.get("setups") is None:  # `setups:` with nothing under it: no section yet (as load)
        from ruamel.yaml.comments import CommentedMap

        data["setups"] = CommentedMap()
    return Expectations(model, data["setups"], data)


def check_writable(directory: Path) -> None:
    """Before any work, for --lac-update-baselines: lac can write in the folder (a probe file is
    made and removed there under its lock; a folder still to be made: its nearest existing
    parent is writable), so a read-only folder stops the run at start, not after every test."""
    where = Path(directory)
    if not where.exists():
        parent = next(p for p in where.parents if p.exists())
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"--lac-expected-dir {where}: lac cannot write in {parent} to make "
                             "it; pass a folder you can write")
        return
    try:
        if not os.access(where, os.W_OK | os.X_OK):
            raise PermissionError(13, "no write permission")
        with locked(where):
            fd, probe = tempfile.mkstemp(dir=where, prefix=".lac-probe-")
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise UsageError(f"--lac-expected-dir {where}: lac cannot write there ({why}), so "
                         "--lac-update-baselines could not record; make it writable or pass "
                         "another --lac-expected-dir") from None


def save(exp: Expectations, directory: Path) -> Path:
    """Written to a new temporary file beside it (a fresh name: never one planted there) and
    renamed over it; a link at the file's name is refused, not written through or replaced."""
    path = file_for(exp.model, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        raise FixtureError(f"{path} is a symbolic link; lac does not write expectations through "
                           "or over links: replace it with the file itself")
    document = exp.document
    if document is None:  # a new file: lac's header, then the data
        from ruamel.yaml.comments import CommentedMap

        document = CommentedMap(model=exp.model, setups=exp.setups)
        document.yaml_set_start_comment(HEADER.removeprefix("# ").rstrip())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            _yaml().dump(document, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextmanager
def locked(directory: Path):
    """Held while a run reads, merges and writes expectations: two runs updating one file never
    lose each other's sections (each re-reads the file under the lock). The folder's lock is
    held at most once per process (locks.py): a run whose report folder is this folder re-enters
    it rather than waiting on itself."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    root = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        hold = locks.acquire(root, wait=True, exclusive=False)
    finally:
        os.close(root)
    try:
        yield
    finally:
        locks.release(hold)


def _kind(name: str) -> str:
    if name.startswith("cos") or name == "difference":
        return "cos"
    return {"count": "count", "clean": "count", "ratio": "ratio"}.get(name, "default")


def part_numbers(claim: str, parts) -> dict[str, float]:
    """The deciding numbers of a claim's parts ((name, numbers) pairs): 'claim/part/number'."""
    return {f"{claim}/{name}/{key}": float(value) for name, numbers in parts
            for key, value in (numbers or {}).items()
            if key not in SKIP and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def quantities(verdicts: dict) -> dict[str, float]:
    """Deciding numbers of every part of every verdict (claim -> Verdict): 'claim/part/number'."""
    return {k: x for claim, v in verdicts.items()
            for k, x in part_numbers(claim, ((p.name, p.numbers) for p in v.parts)).items()}


def make_baselines(values: dict[str, float]) -> dict:
    out = {}
    for key, value in sorted(values.items()):
        floor, rel = TOLERANCES[_kind(key.rsplit("/", 1)[1])]
        out[key] = {"value": round(value, 6), "tolerance": round(max(floor, rel * abs(value)), 6)}
    return out


def beyond(baselines: dict, current: dict[str, float]) -> list[dict]:
    """Every quantity outside baseline +- tolerance (two-sided): {quantity, baseline, value,
    tolerance}."""
    return [{"quantity": key, "baseline": base["value"], "value": value,
             "tolerance": base["tolerance"]}
            for key, value in sorted(current.items())
            if (base := baselines.get(key)) is not None
            and not abs(value - base["value"]) <= base["tolerance"]]


def drift(baselines: dict, current: dict[str, float]) -> list[str]:
    """A message per quantity outside baseline +- tolerance (two-sided)."""
    return [f"{d['quantity']}: baseline {d['baseline']}, now {d['value']:.6g}, tolerance "
            f"{d['tolerance']}" for d in beyond(baselines, current)]
