"""Expectations per model (fixtures/expected/<model>.yaml): verdicts, cell findings, baselines."""
# A model's file holds one section per setup (dtype and chat template) and grid (name@hash):
# expectations recorded under one key are never compared with a run under another. A verdict
# can stay the same while its deciding numbers move; a library or model upgrade that moves one
# beyond its tolerance fails the session with a message naming the quantity.
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import FixtureError
from .rules import FAILS, HOLDS, INCONCLUSIVE

# (absolute floor, relative) tolerance by the kind of number
TOLERANCES = {"cos": (0.01, 0.0), "count": (1.0, 0.0), "ratio": (0.0, 0.15),
              "default": (0.002, 0.10)}
_SKIP = {"layer", "shallowest", "deepest", "informative_layers", "bound"}
HEADER = "# Written by `pytest claims/ --lac-update-baselines`; review before committing.\n"
FIELDS = ("verdicts", "notes", "cell_findings", "baselines")


def file_for(model: str, directory: Path) -> Path:
    """The expectations file of a model identity (characters unsafe in file names replaced)."""
    return Path(directory) / (re.sub(r"[^\w.@-]", "_", model) + ".yaml")


@dataclass
class Expectations:
    model: str
    setups: dict = field(default_factory=dict)  # setup -> grid key -> {field: ...}

    def section(self, setup: str, grid: str) -> dict | None:
        return self.setups.get(setup, {}).get(grid)

    def verdict(self, setup: str, grid: str, claim: str) -> str | None:
        return (self.section(setup, grid) or {}).get("verdicts", {}).get(claim)

    def cell_fails(self, setup: str, grid: str, check: str, cell: str) -> bool:
        return cell in (self.section(setup, grid) or {}).get("cell_findings", {}).get(check, [])

    def record(self, setup: str, grid: str, verdicts: dict, cells: dict) -> None:
        """Take one grid's verdicts (claim -> Verdict), per-cell checks (check -> (cells that ran,
        cells that failed)) and deciding numbers as its expectations; what did not run is kept."""
        sec = self.setups.setdefault(setup, {}).setdefault(grid, {f: {} for f in FIELDS})
        for claim, v in verdicts.items():
            sec["verdicts"][claim] = v.status
            sec["notes"][claim] = v.explain()
            if v.status == HOLDS:
                del sec["notes"][claim]
        for check, (ran, failed) in cells.items():
            kept = set(sec["cell_findings"].get(check, [])) - set(ran)
            sec["cell_findings"][check] = sorted(kept | set(failed))
        sec["baselines"].update(make_baselines(quantities(verdicts)))


def load(model: str, directory: Path) -> Expectations | None:
    """None when the model has no expectations yet (then every claim is expected to hold)."""
    path = file_for(model, directory)
    if not path.exists():
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise FixtureError(f"{path} is not valid YAML: {exc}") from exc
    exp = Expectations(model, raw.get("setups") or {})
    for setup, grids in exp.setups.items():
        for grid, sec in grids.items():
            for claim, status in sec.get("verdicts", {}).items():
                if status not in (HOLDS, FAILS, INCONCLUSIVE):
                    raise FixtureError(f"{path}: {setup} / {grid} / verdicts.{claim} = {status!r}; "
                                       "use HOLDS, FAILS or INCONCLUSIVE")
    return exp


def save(exp: Expectations, directory: Path) -> Path:
    path = file_for(exp.model, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    body = {"model": exp.model, "setups": exp.setups}
    tmp.write_text(HEADER + yaml.safe_dump(body, sort_keys=False, width=120))
    tmp.replace(path)
    return path


def _kind(name: str) -> str:
    if name.startswith("cos") or name == "difference":
        return "cos"
    return {"count": "count", "clean": "count", "ratio": "ratio"}.get(name, "default")


def quantities(verdicts: dict) -> dict[str, float]:
    """Deciding numbers of every part of every verdict (claim -> Verdict): 'claim/part/number'."""
    out = {}
    for claim, v in verdicts.items():
        for part in v.parts:
            for name, value in part.numbers.items():
                if name not in _SKIP and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and math.isfinite(value):
                    out[f"{claim}/{part.name}/{name}"] = float(value)
    return out


def make_baselines(values: dict[str, float]) -> dict:
    out = {}
    for key, value in sorted(values.items()):
        floor, rel = TOLERANCES[_kind(key.rsplit("/", 1)[1])]
        out[key] = {"value": round(value, 6), "tolerance": round(max(floor, rel * abs(value)), 6)}
    return out


def drift(baselines: dict, current: dict[str, float]) -> list[str]:
    """A message per quantity outside baseline +- tolerance (two-sided)."""
    msgs = []
    for key, value in sorted(current.items()):
        base = baselines.get(key)
        if base is not None and not abs(value - base["value"]) <= base["tolerance"]:
            msgs.append(f"{key}: baseline {base['value']}, now {value:.6g}, "
                        f"tolerance {base['tolerance']}")
    return msgs
