"""Per-model expectations (fixtures/expected/<model>.yaml):"""
# expected verdicts, per-cell findings, and the numeric baselines of the regression gate. A verdict
# can stay the same while its deciding numbers move; a library or model upgrade that moves one
# beyond its tolerance fails the session with a message naming the quantity.
from __future__ import annotations

import math
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


@dataclass
class Expectations:
    model: str
    verdicts: dict = field(default_factory=dict)  # claim -> grid -> status
    notes: dict = field(default_factory=dict)  # claim -> grid -> why it does not hold
    cell_findings: dict = field(default_factory=dict)  # check -> grid -> [cells expected to fail]
    baselines: dict = field(default_factory=dict)  # quantity -> {value, tolerance}

    def verdict(self, claim: str, grid: str) -> str | None:
        return self.verdicts.get(claim, {}).get(grid)

    def cell_fails(self, check: str, grid: str, cell: str) -> bool:
        return cell in self.cell_findings.get(check, {}).get(grid, [])

    def record(self, verdicts: dict, cells: dict) -> None:
        """Take this run's verdicts ((claim, model, grid) -> (Verdict, _)), per-cell failures of the
        checks that ran ((check, grid) -> [cells]) and deciding numbers as the expectations."""
        for (claim, _m, grid), (v, _e) in verdicts.items():
            self.verdicts.setdefault(claim, {})[grid] = v.status
            notes = self.notes.setdefault(claim, {})
            notes[grid] = v.explain()
            if v.status == HOLDS:
                del notes[grid]
            if not notes:
                del self.notes[claim]
        for (check, grid), failed in cells.items():
            self.cell_findings.setdefault(check, {})[grid] = sorted(failed)
        self.baselines = {**self.baselines, **make_baselines(quantities(verdicts))}


def load(model: str, directory: Path) -> Expectations | None:
    """None when the model has no expectations yet (then every claim is expected to hold)."""
    path = Path(directory) / f"{model}.yaml"
    if not path.exists():
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise FixtureError(f"{path} is not valid YAML: {exc}") from exc
    exp = Expectations(model, *(raw.get(k, {}) for k in ("verdicts", "notes", "cell_findings",
                                                          "baselines")))
    for claim, per_grid in exp.verdicts.items():
        for grid, status in per_grid.items():
            if status not in (HOLDS, FAILS, INCONCLUSIVE):
                raise FixtureError(f"{path}: verdicts.{claim}.{grid} = {status!r}; "
                                   "use HOLDS, FAILS or INCONCLUSIVE")
    return exp


def save(exp: Expectations, directory: Path) -> Path:
    path = Path(directory) / f"{exp.model}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"model": exp.model, "verdicts": exp.verdicts, "notes": exp.notes,
            "cell_findings": exp.cell_findings, "baselines": exp.baselines}
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(HEADER + yaml.safe_dump(body, sort_keys=False, width=120))
    tmp.replace(path)
    return path


def _kind(name: str) -> str:
    if name.startswith("cos") or name == "difference":
        return "cos"
    return {"count": "count", "clean": "count", "ratio": "ratio"}.get(name, "default")


def quantities(verdicts) -> dict[str, float]:
    """Deciding numbers of every part of every verdict: 'claim/grid/part/number' -> value."""
    out = {}
    for (claim, _model, grid), (v, _exp) in verdicts.items():
        for part in v.parts:
            for name, value in part.numbers.items():
                if name not in _SKIP and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and math.isfinite(value):
                    out[f"{claim}/{grid}/{part.name}/{name}"] = float(value)
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
