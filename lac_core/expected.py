"""Per-model expectations in fixtures/expected/<model>.yaml: verdicts, per-cell findings, baselines."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import FixtureError
from .paths import FIXTURES
from .rules import FAILS, HOLDS, INCONCLUSIVE



def expected_dir() -> Path:
    """fixtures/expected, or $LAC_EXPECTED_DIR (used by the plugin's own end-to-end tests)."""
    import os

    return Path(os.environ.get("LAC_EXPECTED_DIR") or FIXTURES / "expected")


@dataclass
class Expectations:
    model: str
    verdicts: dict = field(default_factory=dict)  # claim -> grid -> status
    notes: dict = field(default_factory=dict)  # claim -> why it does not hold
    cell_findings: dict = field(default_factory=dict)  # check -> grid -> [cell ids expected to fail]
    baselines: dict = field(default_factory=dict)  # quantity -> {value, tolerance}
    path: Path | None = None

    def verdict(self, claim: str, grid: str) -> str | None:
        return self.verdicts.get(claim, {}).get(grid)

    def cell_fails(self, check: str, grid: str, cell: str) -> bool:
        return cell in self.cell_findings.get(check, {}).get(grid, [])


def path_for(model: str) -> Path:
    return expected_dir() / f"{model}.yaml"


def load(model: str) -> Expectations | None:
    """None when the model has no expectations yet (then every claim is expected to hold)."""
    path = path_for(model)
    if not path.exists():
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise FixtureError(f"{path} is not valid YAML: {exc}") from exc
    exp = Expectations(model=model, verdicts=raw.get("verdicts", {}), notes=raw.get("notes", {}),
                       cell_findings=raw.get("cell_findings", {}), baselines=raw.get("baselines", {}), path=path)
    for claim, per_grid in exp.verdicts.items():
        for grid, status in per_grid.items():
            if status not in (HOLDS, FAILS, INCONCLUSIVE):
                raise FixtureError(f"{path}: verdicts.{claim}.{grid} = {status!r}; use HOLDS, FAILS or INCONCLUSIVE")
    return exp


def save(exp: Expectations) -> Path:
    path = path_for(exp.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"model": exp.model, "verdicts": exp.verdicts, "notes": exp.notes,
            "cell_findings": exp.cell_findings, "baselines": exp.baselines}
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("# Written by `pytest claims/ --lac-update-baselines`; review before committing.\n"
                   + yaml.safe_dump(body, sort_keys=False, width=120))
    tmp.replace(path)
    return path
