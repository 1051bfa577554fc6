"""The regression gate: a run's verdicts and deciding numbers against the model's recorded
expectations, and the checks on the expectations folder made before anything loads."""
from __future__ import annotations

import os

from ..errors import UsageError
from ..paths import EXPECTED, FIXTURES, ROOT
from ..verdicts import expected
from ..verdicts.gate import FAILED, NOT_APPLIED, PASSED, CellOutcome, Changed, Drift, GateOutcome
from .settings import Settings


def gate(session, rewritten: tuple[str, ...] | None = None) -> GateOutcome:
    """The regression gate's outcome, as every output a CI reads shows it (results.json,
    REPORT.md, SUMMARY.md, the JUnit case lac/regression_gate): each deciding number against its
    baseline (two-sided) and each verdict against its expected one; "not applied" when nothing
    that ran had expectations, or when the run rewrote them (`rewritten`: what it changed, one
    entry per value or verdict). Per-cell outcomes against theirs are listed (unexpected_cells)."""
    if session.settings.updating:
        changes = tuple(rewritten or ())
        return GateOutcome(NOT_APPLIED, "this run rewrote the expectations",
                           refused=tuple(session.refused), updating=True, rewritten=changes,
                           review=bool(changes) and not session.settings.regen_all)
    drift = []
    for model, grid in dict.fromkeys((m, g) for (_c, m, g) in session.verdicts):
        exp, setup, key = session.expectation_key(model, grid)
        base = ((exp.section(setup, key) if exp else None) or {}).get("baselines")
        if base:
            now = expected.quantities({c: v for (c, m, g), (v, _e) in session.verdicts.items()
                                       if (m, g) == (model, grid)})
            drift += [Drift(model, grid, **d) for d in expected.beyond(base, now)]
    changed = [Changed(c, m, g, exp, v.status)
               for (c, m, g), (v, exp) in sorted(session.verdicts.items())
               if exp is not None and exp != v.status]
    failed = bool(drift or changed or session.refused)
    without = tuple(session.unexpected())
    status, why = FAILED if failed else PASSED, ""
    if not failed and without and not session.gated():
        # nothing was recorded for anything that ran: a gate that compared nothing did not pass
        status, why = NOT_APPLIED, ("no expectations recorded for what ran, so the paper's rules "
                                    "decided each verdict: " + ", ".join(without))
    return GateOutcome(status, why, tuple(drift), tuple(changed), without,
                       unexpected_cells(session), tuple(session.refused))


def unexpected_cells(session) -> tuple[CellOutcome, ...]:
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
                out.append(CellOutcome(check, model, grid, cell,
                                       "fails" if expect else "passes",
                                       "fails" if cell in failed else "passes"))
    return tuple(out)


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
