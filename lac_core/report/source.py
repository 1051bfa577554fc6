"""What a report set is rendered from: results.json alone, read back into typed, read-only values
(records, verdicts, thresholds, grids), so a report can be rebuilt from a run's results.json
after the run, or after a fix to the report code, and a run's own report is rendered the same
way (it never reads the live session)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from ..errors import UsageError
from ..protocol.grids import Grid
from ..verdicts import rules
from ..verdicts.gate import GateOutcome
from ..verdicts.results import RECORDS, record_from_json
from ..verdicts.thresholds import Names, Thresholds, section_type

SCHEMA = "lac-results/3 (see docs/SCHEMA.md)"
KINDS = {kind: name for kind, (_record, name) in RECORDS.items()}  # kind -> results.json list


class NotRenderable(UsageError):
    """A results.json a report cannot be rendered from (another schema, or not lac's)."""


@dataclass(frozen=True)
class Template:
    """The chat template a run used, by name (`raw`: none, the prompt text as it is)."""

    name: str

    @property
    def raw(self) -> bool:
        return self.name == "raw"


@dataclass(frozen=True)
class Planned:
    """What the run set out to do: its models (a model that failed to load keeps its column)
    and its chat template."""

    models: Mapping
    template: Template


def _part(d: Mapping) -> rules.Part:
    margin = d["margin"]
    return rules.Part(d["name"], d["status"], math.nan if margin is None else margin, d["detail"],
                      dict(d.get("numbers") or {}), dict(d.get("intervals") or {}))


def verdict_from_json(d: Mapping) -> rules.Verdict:
    """A verdict as results.json holds it (a margin that was NaN is null there)."""
    return rules.Verdict(d["claim"], d["subject"], d["status"],
                         _part(d["deciding"]) if d.get("deciding") else None,
                         tuple(_part(p) for p in d["parts"]),
                         tuple(_part(p) for p in d.get("preconditions", ())),
                         tuple(d.get("fragile", ())))


def thresholds_from_json(d: Mapping) -> Thresholds:
    """The thresholds a run used, each section typed as its values are (a list: names)."""
    sections = {}
    for name, values in d["sections"].items():
        types = tuple((k, Names if isinstance(v, list) else float) for k, v in values.items())
        sections[name] = section_type(name, types)(**{k: tuple(v) if isinstance(v, list) else v
                                                       for k, v in values.items()})
    return Thresholds(sections, dict(d.get("why", {})), dict(d.get("titles", {})),
                      tuple(Path(f) for f in d.get("files", ())))


def grid_from_json(d: Mapping) -> Grid:
    """A grid as results.json describes it (its whole content), equal to the one the run read."""
    names = {f.name for f in fields(Grid)}
    return Grid(**{k: (tuple(v) if k == "experiments" else v) for k, v in d.items()
                   if k in names})


@dataclass(frozen=True)
class RunSource:
    """results.json, typed and read-only: the one input of every file of a report set."""

    doc: Mapping
    results: Mapping  # (model, grid label, kind) -> record
    verdicts: Mapping  # (claim, model, grid label) -> (rules.Verdict, expected status or None)
    cell_failures: Mapping  # (check, model, grid label) -> cells
    thresholds: Thresholds
    grids: Mapping  # grid label -> protocol Grid
    checked: Planned
    provenance: Mapping  # model -> provenance
    timings: Mapping  # (model, grid label, kind) -> seconds
    load_seconds: Mapping  # model -> seconds
    claims_planned: frozenset | None
    gate_outcome: GateOutcome | None
    run_id: str

    def run_info(self) -> Mapping:
        return self.doc["run"]

    def unexpected(self) -> list[str]:
        return list(self.doc["run"]["without_expectations"])

    @classmethod
    def of(cls, doc: Mapping) -> "RunSource":
        """The source of a results.json document (parsed JSON); NotRenderable when it is not one
        of this schema."""
        schema = doc.get("schema") if isinstance(doc, Mapping) else None
        if schema != SCHEMA:
            raise NotRenderable(f"results.json of schema {schema!r}: a report set is rendered "
                                f"from {SCHEMA!r} only (older files lack the grids' content, "
                                "the thresholds and the plan); rerun lac to make one")
        run = doc["run"]
        results = {}
        for kind, name in KINDS.items():
            for raw in doc[name]:
                results[(raw["model"], raw["grid_label"], kind)] = record_from_json(kind, raw)
        return cls(
            doc=doc, results=results,
            verdicts={(v["claim"], v["model"], v["grid"]): (verdict_from_json(v), v["expected"])
                      for v in doc["verdicts"]},
            cell_failures={(f["check"], f["model"], f["grid"]): tuple(f["cells"])
                           for f in doc["cell_failures"]},
            thresholds=thresholds_from_json(doc["thresholds"]),
            grids={label: grid_from_json(g) for label, g in run["grids"].items()},
            checked=Planned(dict.fromkeys(run["models_planned"]), Template(run["chat_template"])),
            provenance=dict(doc["models"]),
            timings={tuple(t[:3]): t[3] for t in run["timings"]},
            load_seconds=dict(run["load_seconds"]),
            claims_planned=(None if run["claims_planned"] is None
                            else frozenset(run["claims_planned"])),
            gate_outcome=GateOutcome.from_json(doc.get("regression_gate")),
            run_id=run["run_id"])
