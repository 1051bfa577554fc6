"""The gates a claim test passes through: a verdict is recorded and asserted against the model's
expectations (strict xfail for a recorded finding), and a per-cell check likewise."""
# Import-light (the plugin names this module): the verdicts load inside the gates.
from __future__ import annotations

import time
import traceback
import warnings
from pathlib import Path

import pytest

from .start import FIXTURE, place


class RuleError(Exception):
    """A claim's rule raised, or returned something other than a Verdict: its own test fails
    with this, and the run records the claim as an error (run.failed, run.not_run)."""


def where(exc: BaseException, rule) -> str:
    """The line of the rule's own file that raised (else the innermost line): what to fix."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = getattr(getattr(rule, "__code__", None), "co_filename", None)
    frame = next((f for f in reversed(frames) if f.filename == mine), frames[-1] if frames else None)
    return f" at {Path(frame.filename).name}:{frame.lineno} in {frame.name}" if frame else ""


def judged(claim: str, result, thresholds):
    """uncertainty.judge, with a broken rule named: raises RuleError("error: ...") when the rule
    raises (on the full grid or a resample) or returns no Verdict. A rule is the user's code, so
    any exception is its claim's error, never the run's."""
    from ..verdicts import claims as registry
    from ..verdicts import rules, uncertainty

    rule = registry.CLAIMS[claim].rule
    try:
        got = rule(result.summary, getattr(thresholds, claim))
        if not isinstance(got, rules.Verdict):
            raise RuleError(f"error: its rule returned {type(got).__name__}, not a Verdict "
                            "(build it with lac_core.combine; docs/own-claim.md)")
        return uncertainty.judge(claim, result, thresholds)
    except RuleError:
        raise
    except Exception as exc:  # noqa: BLE001  whatever a rule raises is its claim's error
        raise RuleError(f"error: {type(exc).__name__}: {exc}{where(exc, rule)}") from exc


def _why(verdict, claim: str, result, thresholds) -> str:
    """The verdict, its deciding part's numbers and interval, and the cells against the line."""
    from ..verdicts import claims as registry

    d = verdict.deciding
    against = registry.against(claim, d, result, thresholds)
    margin = d.intervals.get("margin") if d else None
    return (verdict.explain() + (f"; margin {d.margin:.4g}, 95% interval [{margin[0]:.4g}, "
                                 f"{margin[1]:.4g}]" if margin else "")
            + (f"; FRAGILE: {', '.join(verdict.fragile)}" if verdict.fragile else "")
            + (f"; cells against the line ({len(against)}/{len(result.cells)}): "
               f"{', '.join(against[:12])}" if against else ""))


def _properties(claim: str, verdict, exp) -> list[tuple[str, object]]:
    """What a CI reads of a claim test (JUnit <property>s): the verdict, the expected one and
    the numbers it was decided on."""
    d = verdict.deciding
    props = [("lac_claim", claim), ("lac_verdict", verdict.status),
             ("lac_expected", exp or "HOLDS (no expectations recorded)")]
    if d is not None:
        props += [("lac_deciding", f"{d.name}: {d.detail}"), ("lac_margin", d.margin)]
        if "margin" in d.intervals:
            props.append(("lac_margin_interval", d.intervals["margin"]))
    return props + [("lac_fragile", ", ".join(verdict.fragile))] if verdict.fragile else props


def _xfail(request, reason: str):
    request.applymarker(pytest.mark.xfail(strict=True, reason=f"finding: {reason}"))


OLD_CLAIM_CALL = ("claim_gate(claim, result, model, grid) is deprecated: write claim_gate(result); "
                  "the claim is read from the test's @pytest.mark.claim(ID), the model and grid "
                  "from its parameters (docs/own-claim.md)")
OLD_CELL_CALL = ("cell_gate(check, result, model, grid, cell) is deprecated: write "
                 "cell_gate(check, result); the model, grid and cell are read from the test's "
                 "parameters (docs/own-claim.md)")


def _refuse(node, problem: str):
    """A claim test written wrongly: its own failure, one line naming the problem and the fix."""
    pytest.fail(f"lac: {node.nodeid}: {problem}", pytrace=False)


def _registered(claim: str, registry) -> None:
    if claim not in registry.CLAIMS:
        raise pytest.UsageError(f"lac: claim {claim} is not registered: register it with "
                                "lac_core.register_claim before the session starts (a "
                                "conftest.py or plugin module; docs/own-claim.md)")


def claim_call(node, args: tuple) -> tuple[str, object, str, str]:
    """(claim, result, model, grid) of a claim_gate call, so a test names its claim once:
    `claim_gate(result)` reads the claim from the test's claim mark and the model and grid from
    its parameters. The old `claim_gate(claim, result, model, grid)` (user files written before)
    still works, with a DeprecationWarning; its claim must be the mark's."""
    from ..verdicts import claims as registry

    marked = place(node).claim
    if len(args) == 4 and isinstance(args[0], str):
        warnings.warn(OLD_CLAIM_CALL, DeprecationWarning, stacklevel=3)  # at the test's line
        claim, result, model, grid = args
        if marked is not None and marked != claim:
            _refuse(node, f"it is marked @pytest.mark.claim({marked!r}) but calls "
                          f"claim_gate({claim!r}, ...): a test decides one claim; write "
                          "claim_gate(result) and name the claim in the mark alone")
        _registered(claim, registry)
        return claim, result, model, grid
    if len(args) != 1:
        _refuse(node, f"claim_gate takes the result alone, as claim_gate(sweep_result) ("
                      f"{len(args)} arguments given)")
    if marked is None:
        _refuse(node, "claim_gate(result) reads the claim from the test's mark, and it has "
                      "none: add @pytest.mark.claim(ID) naming the claim it decides")
    _registered(marked, registry)
    kind = registry.CLAIMS[marked].experiment
    at = place(node, kind)
    if at.model is None or at.grid is None:
        _refuse(node, f"claim {marked} reads the {kind} result, and the test has no model or "
                      f"{FIXTURE[kind]}_grid parameter: ask for {FIXTURE[kind]}_result")
    return marked, args[0], at.model, at.grid


def cell_call(node, check: str, args: tuple) -> tuple[str, str, str]:
    """(model, grid, cell) of a cell_gate call: `cell_gate(check, result[, cell])` reads them
    from the test's parameters (the cell too unless given). The old `cell_gate(check, result,
    model, grid, cell)` still works, with a DeprecationWarning."""
    from ..verdicts import claims as registry

    if len(args) == 3:
        warnings.warn(OLD_CELL_CALL, DeprecationWarning, stacklevel=3)
        return args
    if len(args) > 1:
        _refuse(node, f"cell_gate takes the check, the result and optionally the cell, as "
                      f"cell_gate(check, sweep_result) ({len(args) + 2} arguments given)")
    if check not in registry.CELL_CHECKS:
        _refuse(node, f"cell check {check} is not registered: declare it in a claim's "
                      "cell_checks (docs/own-claim.md)")
    kind = registry.CELL_CHECKS[check].experiment
    at, name = place(node, kind), FIXTURE[kind]
    cell = args[0] if args else at.cell
    if at.model is None or at.grid is None or cell is None:
        _refuse(node, f"cell check {check} reads the {kind} result of one cell, and the test "
                      f"has no model, {name}_grid or {name}_cell parameter: ask for {name}_cell "
                      f"and {name}_result")
    return at.model, at.grid, cell


@pytest.fixture
def claim_gate(request, lac_session):
    """`claim_gate(result)`: judge the test's claim (its @pytest.mark.claim) on the result of its
    model and grid, record the verdict and assert it: a claim must hold unless the model's
    expectations say otherwise, then it is a strict xfail (a change of verdict, either way, fails
    the run). A run that rewrites the expectations only records it."""

    def gate(*args):
        """claim_gate(result): the claim, model and grid are the test's (claim_call)."""
        from ..verdicts import claims as registry
        from ..verdicts import rules, uncertainty

        claim, result, model, grid = claim_call(request.node, args)
        kind = registry.CLAIMS[claim].experiment
        waits = not uncertainty.resampled_already(kind, result)
        if waits:  # the first verdict on a result resamples its grid: say so, and time it
            lac_session.progress.start(f"{model} / {grid} {kind} intervals ("
                                       f"{uncertainty.RESAMPLES:,} resamples of the "
                                       f"{uncertainty.WHAT})")
            t0 = time.perf_counter()
        try:
            verdict = judged(claim, result, lac_session.thresholds)
        except RuleError as exc:  # this claim's error, recorded; no other verdict is touched
            if waits:
                lac_session.progress.end(f"failed: {claim}'s rule")
            lac_session.record_error(claim, model, grid, request.node.nodeid, str(exc))
            why = f"{claim} on {model} / {grid}: {exc}"
            if exc.__cause__ is None:  # a wrong return: no traceback to show
                pytest.fail(why, pytrace=False)
            raise RuleError(why) from exc.__cause__  # the traceback shows the rule's line
        if waits:
            lac_session.progress.end(f"{len(result.cells)} cells")
            lac_session.ledger.interval_seconds[model] = round(
                lac_session.ledger.interval_seconds.get(model, 0.0) + time.perf_counter() - t0, 1)
        exp = lac_session.record_verdict(claim, model, grid, verdict)
        request.node.user_properties.extend(_properties(claim, verdict, exp))
        if lac_session.settings.updating:  # recorded: the run's end writes it and says what moved
            return
        if exp is not None and verdict.status != exp:
            pytest.fail(f"{claim} verdict changed on {model} / {grid}: expected {exp}, got "
                        f"{_why(verdict, claim, result, lac_session.thresholds)}", pytrace=False)
        if exp is not None and exp != rules.HOLDS:
            _xfail(request, verdict.explain())
        if verdict.status != rules.HOLDS:  # its numbers and rule, not the plugin's traceback
            pytest.fail(f"{_why(verdict, claim, result, lac_session.thresholds)}\n"
                        f"rule ({claim}): {registry.CLAIMS[claim].statement}", pytrace=False)

    return gate


@pytest.fixture
def cell_gate(request, lac_session):
    """`cell_gate(check, result[, cell])`: run a per-cell check (claims.CELL_CHECKS) on the
    test's model, grid and cell; failures the model's expectations list are strict xfails,
    others must pass."""

    def gate(check: str, result, *args):
        """cell_gate(check, result[, cell]): the model, grid and cell are the test's."""
        from ..verdicts import claims as registry

        model, grid, cell = cell_call(request.node, check, args)
        problems = registry.CELL_CHECKS[check].check(result, cell, lac_session.thresholds)
        if lac_session.record_cell(check, model, grid, cell, problems) and \
                not lac_session.settings.updating:
            _xfail(request, f"{check} fails on {model} / {grid} / {cell}")
        if problems and not lac_session.settings.updating:
            pytest.fail(f"{check} on {model} / {grid} / {cell}: " + "; ".join(problems),
                        pytrace=False)

    return gate
