"""The gates a claim test passes through: a verdict is recorded and asserted against the model's
expectations (strict xfail for a recorded finding), and a per-cell check likewise."""
# Import-light (the plugin names this module): the verdicts load inside the gates.
from __future__ import annotations

import pytest


def _why(verdict, claim: str, result, thresholds) -> str:
    """The verdict, its deciding part's numbers and interval, and the cells against the line."""
    from ..verdicts import cells

    d = verdict.deciding
    against = cells.against(claim, d, result, thresholds) if d else []
    margin = d.intervals.get("margin") if d else None
    return (verdict.explain() + (f"; margin {d.margin:.4g}, 95% interval [{margin[0]:.4g}, "
                                 f"{margin[1]:.4g}]" if margin else "")
            + (f"; FRAGILE: {', '.join(verdict.fragile)}" if verdict.fragile else "")
            + (f"; cells against the line ({len(against)}/{len(result.cells)}): "
               f"{', '.join(against[:12])}" if against else ""))


def _xfail(request, reason: str):
    request.applymarker(pytest.mark.xfail(strict=True, reason=f"finding: {reason}"))


@pytest.fixture
def claim_gate(request, lac_session):
    """Record a verdict and assert it: a claim must hold unless the model's expectations say
    otherwise, then it is a strict xfail (a change of verdict, either way, fails the run)."""

    def gate(claim: str, result, model: str, grid: str):
        from ..verdicts import claims as registry
        from ..verdicts import rules, uncertainty

        if claim not in registry.CLAIMS:
            raise pytest.UsageError(f"lac: claim {claim} is not registered: register it with "
                                    "lac_core.register_claim before the session starts (a "
                                    "conftest.py or plugin module; docs/own-claim.md)")
        verdict = uncertainty.judge(claim, result, lac_session.thresholds)
        exp = lac_session.record_verdict(claim, model, grid, verdict)
        if exp is not None and verdict.status != exp:
            pytest.fail(f"{claim} verdict changed on {model} / {grid}: expected {exp}, "
                        f"got {_why(verdict, claim, result, lac_session.thresholds)}")
        if exp is not None and exp != rules.HOLDS:
            _xfail(request, verdict.explain())
        assert verdict.status == rules.HOLDS, _why(verdict, claim, result, lac_session.thresholds)

    return gate


@pytest.fixture
def cell_gate(request, lac_session):
    """Run a per-cell check (claims.CELL_CHECKS): failures the model's expectations list are
    strict xfails, others must pass."""

    def gate(check: str, result, model: str, grid: str, cell: str):
        from ..verdicts import claims as registry

        problems = registry.CELL_CHECKS[check].check(result, cell, lac_session.thresholds)
        if lac_session.record_cell(check, model, grid, cell, problems):
            _xfail(request, f"{check} fails on {model} / {grid} / {cell}")
        assert not problems, f"{check} on {model} / {grid} / {cell}: " + "; ".join(problems)

    return gate
