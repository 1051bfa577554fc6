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
    cells worst first with their declared severities: what REPORT.md lists. Each severity was
    computed when its cell failed (Session.record_cell), where the check's code is: an xdist
    worker's, for a user's check the controller or a report rebuilt later does not load."""
    kind = registry.CELL_CHECKS[check].experiment if check in registry.CELL_CHECKS else None
    r = session.ledger.results.get((model, grid, kind))
    out = {"check": check, "model": model, "grid": grid, "cells": sorted(cells),
           "experiment": kind}
    if r is not None:
        known = session.ledger.severities.get((check, model, grid), {})
        severity = {c: known[c] if c in known else session.severity(check, model, grid, c)
                    for c in cells}
        errors = [v for v in severity.values() if isinstance(v, str)]
        if errors:  # a user's severity function failed: its cells, unranked, and why
            worst = [[c, None] for c in sorted(cells)]
            out["severity_error"] = errors[0]
        else:
            worst = [list(w) for w in breakdown.ranked(severity)]
        out.update(n_cells=len(r.cells), worst=worst)
    return out


# The settings that change a run's numbers: shards merge only when these agree (lac_core/merge.py).
# The chat template is compared by run.chat_template and each model's chat_template_sha256.
NUMBERS = ("plan", "token_budget", "layers", "probes", "dtype", "attention", "swap_pairs")


def gate_inputs(session) -> dict:
    """What the regression gate needs of a run beyond its verdicts, so it can be applied from
    results.json alone (gating.gate_of; a merge of shards): the fingerprint whole, the settings
    that change numbers, the keys of its expectations (each grid's, each model's setup and each
    claim's, each claim's cell checks) and the cells each cell check ran on."""
    return {"fingerprint": dict(session.fingerprint()),
            "settings": {name: getattr(session.settings, name) for name in NUMBERS},
            "expectation_keys": session.book.keys(),
            "cell_checks": [{"check": c, "model": m, "grid": g, "cells": sorted(ran)}
                            for (c, m, g), ran in sorted(session.ledger.cell_checks.items())]}


def results_document(session) -> dict:
    """results.json of the session, as plain JSON values."""
    doc = {"schema": SCHEMA, "run": session.run_info(),
           "models": dict(sorted(session.ledger.provenance.items())),
           "thresholds": thresholds_json(session.thresholds),
           "claims": {c.id: declaration(c) for c in registry.CLAIMS.values()},
           "verdicts": [{**asdict(v), "model": m, "grid": g, "expected": exp}
                        for (c, m, g), (v, exp) in sorted(session.ledger.verdicts.items())],
           "cell_failures": [cell_failures(session, c, m, g, cells)
                             for (c, m, g), cells in sorted(session.ledger.cell_failures.items())],
           **{name: [] for name in KINDS.values()}}
    for (_m, label, kind), r in sorted(session.ledger.results.items(), key=lambda kv: kv[0]):
        if kind in KINDS:
            doc[KINDS[kind]].append({**asdict(r), "grid_label": label,
                                     **findings.extra(kind, r, session.thresholds)})
    gate = session.out.gate_outcome
    doc["regression_gate"] = None if gate is None else gate.to_json()
    doc["anti_steering"] = [{"model": m, "grid": g, **breakdown.anti_steering(r)}
                            for (m, g, kind), r in sorted(session.ledger.results.items())
                            if kind == Kind.MARKERS]
    doc.update(gate_inputs(session))
    return jsonable(doc)
