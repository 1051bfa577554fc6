"""The regression gate: a run's verdicts and deciding numbers against the model's recorded
expectations, and the checks on the expectations folder made before anything loads."""
from __future__ import annotations

import os

from ..errors import UsageError
from ..paths import EXPECTED, FIXTURES, ROOT
from ..verdicts import expected
from .settings import Settings


def gate(session) -> dict:
    """The regression gate, as every output a CI reads shows it (results.json, REPORT.md,
    SUMMARY.md, the JUnit case lac/regression_gate): each deciding number against its
    baseline (two-sided) and each verdict against its expected one; "not applied" when nothing
    that ran had expectations. Per-cell outcomes against theirs are listed (unexpected_cells)."""
    if session.settings.updating:  # finish() adds what was rewritten and whether to review
        return {"status": "not applied", "why": "this run rewrote the expectations",
                "drift": [], "changed_verdicts": [], "without_expectations": [],
                "unexpected_cells": [], "refused": list(session.refused), "rewritten": [],
                "review": False}
    drift = []
    for model, grid in dict.fromkeys((m, g) for (_c, m, g) in session.verdicts):
        exp, setup, key = session.expectation_key(model, grid)
        base = ((exp.section(setup, key) if exp else None) or {}).get("baselines")
        if base:
            now = expected.quantities({c: v for (c, m, g), (v, _e) in session.verdicts.items()
                                       if (m, g) == (model, grid)})
            drift += [{"model": model, "grid": grid, **d} for d in expected.beyond(base, now)]
    changed = [{"claim": c, "model": m, "grid": g, "expected": exp, "got": v.status}
               for (c, m, g), (v, exp) in sorted(session.verdicts.items())
               if exp is not None and exp != v.status]
    failed = bool(drift or changed or session.refused)
    without = session.unexpected()
    out = {"status": "failed" if failed else "passed", "drift": drift,
           "changed_verdicts": changed, "without_expectations": without,
           "unexpected_cells": unexpected_cells(session), "refused": list(session.refused)}
    if not failed and without and not session.gated():
        # nothing was recorded for anything that ran: a gate that compared nothing did not pass
        out.update(status="not applied", why="no expectations recorded for what ran, so the "
                   "paper's rules decided each verdict: " + ", ".join(without))
    return out


def unexpected_cells(session) -> list[dict]:
    """Per-cell checks whose outcome is not the expected one (a cell passes unless the
    expectations list it): a failure nothing expected, or a recorded failure that now passes
    (a strict xfail). Either fails its test, so the run's outcome names them."""
    out = []
    for (check, model, grid), ran in sorted(session.cell_checks.items()):
        exp, setup, key = session.expectation_key(model, grid)
        failed = set(session.cell_failures.get((check, model, grid), ()))
        for cell in sorted(ran):
            expect = bool(exp and exp.cell_fails(setup, key, check, cell))
            if expect != (cell in failed):
                out.append({"check": check, "model": model, "grid": grid, "cell": cell,
                            "expected": "fails" if expect else "passes",
                            "got": "fails" if cell in failed else "passes"})
    return out


REVIEW = ("lac: expectations rewritten (--lac-update-baselines): review the changes above, then "
          "rerun without it")


def check_expectations_folder(s: Settings) -> None:
    """The expectations folder is usable, checked before anything is loaded or downloaded."""
    where = s.expected_dir
    if os.path.lexists(where) and not where.is_dir():
        raise UsageError(f"--lac-expected-dir {where} is not a folder; pass the folder of the "
                         "per-model expectation files")
    if not where.exists() and not s.updating:
        raise UsageError(f"--lac-expected-dir {where} does not exist, so no expectations would "
                         "be read and the regression gate would be off; pass an existing "
                         "folder, or --lac-update-baselines to record into a new one")
    if s.updating and where == EXPECTED and FIXTURES != ROOT / "fixtures":
        raise UsageError("lac is installed: it never writes into its own package; pass "
                         "--lac-expected-dir DIR to record expectations in a folder of yours")
    if s.updating:
        expected.check_writable(where)


def gate_lines(gate: dict) -> list[str]:
    """The gate's failures as terminal (and JUnit) lines."""
    drift = [f"  {d['model']} / {d['grid']}: {d['quantity']}: baseline {d['baseline']}, now "
             f"{d['value']:.6g}, tolerance {d['tolerance']}" for d in gate["drift"]]
    changed = [f"  {c['claim']} on {c['model']} / {c['grid']}: expected {c['expected']}, got "
               f"{c['got']}" for c in gate["changed_verdicts"]]
    return ([*(["lac: numeric drift beyond tolerance (regression gate):"] if drift else []),
             *drift, *(["lac: verdicts that changed (regression gate):"] if changed else []),
             *changed] + (["lac: if the change is intended, rerun with --lac-update-baselines "
                           "and review the diff"] if drift or changed else []))
