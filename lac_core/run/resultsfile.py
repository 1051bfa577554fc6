"""results.json of a session: the run, provenance per model, the thresholds, verdicts, cell
findings and every record, with all a report set needs (report.source reads it back): the
session writes this, and the report is rendered from it alone."""
from __future__ import annotations

from dataclasses import asdict

from ..report import breakdown, findings
from ..report.source import KINDS, SCHEMA
from ..report.tables import declaration
from ..verdicts import claims as registry
from ..verdicts.kinds import Kind
from ..verdicts.results import jsonable


def thresholds_json(t) -> dict:
    """Every thresholds section's values, their reasons and titles, and the files, by name."""
    return {"sections": {name: asdict(section) for name, section in t.sections.items()},
            "why": t.why, "titles": t.titles, "files": [f.name for f in t.files]}


def cell_failures(session, check: str, model: str, grid: str, cells) -> dict:
    """A check's failing cells on one model and grid, and (where its result is at hand) the
    cells worst first with their declared severities: what REPORT.md lists, computed here since
    a check's code may be a user's that a report rebuilt later does not load."""
    kind = registry.CELL_CHECKS[check].experiment if check in registry.CELL_CHECKS else None
    r = session.results.get((model, grid, kind))
    out = {"check": check, "model": model, "grid": grid, "cells": sorted(cells),
           "experiment": kind}
    if r is not None:
        try:
            worst = [list(w) for w in breakdown.worst_first(check, r, sorted(cells),
                                                            session.thresholds)]
        except Exception as exc:  # a user's severity function: its cells, unranked, and why
            worst = [[c, None] for c in sorted(cells)]
            out["severity_error"] = f"{type(exc).__name__}: {exc}"
        out.update(n_cells=len(r.cells), worst=worst)
    return out


def results_document(session) -> dict:
    """results.json of the session, as plain JSON values."""
    doc = {"schema": SCHEMA, "run": session.run_info(),
           "models": dict(sorted(session.provenance.items())),
           "thresholds": thresholds_json(session.thresholds),
           "claims": {c.id: declaration(c) for c in registry.CLAIMS.values()},
           "verdicts": [{**asdict(v), "model": m, "grid": g, "expected": exp}
                        for (c, m, g), (v, exp) in sorted(session.verdicts.items())],
           "cell_failures": [cell_failures(session, c, m, g, cells)
                             for (c, m, g), cells in sorted(session.cell_failures.items())],
           **{name: [] for name in KINDS.values()}}
    for (_m, label, kind), r in sorted(session.results.items(), key=lambda kv: kv[0]):
        if kind in KINDS:
            doc[KINDS[kind]].append({**asdict(r), "grid_label": label,
                                     **findings.extra(kind, r, session.thresholds)})
    gate = session.gate_outcome
    doc["regression_gate"] = None if gate is None else gate.to_json()
    doc["anti_steering"] = [{"model": m, "grid": g, **breakdown.anti_steering(r)}
                            for (m, g, kind), r in sorted(session.results.items())
                            if kind == Kind.MARKERS]
    return jsonable(doc)
