"""lac: the persona x task claims of "As X, Do Y" as a pytest suite.

The public face: what a user's code imports from `lac_core`. Every name loads on first use (a
module __getattr__), so importing `lac_core` pulls nothing heavy (no torch, transformers, numpy
or matplotlib) until a name is asked for. Writing a claim of your own: docs/own-claim.md.
"""
from __future__ import annotations

import importlib

# name -> the module that holds it (imported on first use)
_WHERE = {
    # declaring a claim (verdicts.claims) and writing its rule (verdicts.rules)
    "Claim": "lac_core.verdicts.claims", "CellCheck": "lac_core.verdicts.claims",
    "register_claim": "lac_core.verdicts.claims", "Names": "lac_core.verdicts.claims",
    "CellMetric": "lac_core.verdicts.claims", "register_metric": "lac_core.verdicts.claims",
    "Part": "lac_core.verdicts.rules", "Verdict": "lac_core.verdicts.rules",
    "HOLDS": "lac_core.verdicts.rules", "FAILS": "lac_core.verdicts.rules",
    "INCONCLUSIVE": "lac_core.verdicts.rules", "combine": "lac_core.verdicts.rules",
    "with_precondition": "lac_core.verdicts.rules",
    # what a rule reads
    "Summary": "lac_core.verdicts.metrics", "SweepSummary": "lac_core.verdicts.results",
    "MarkerSummary": "lac_core.verdicts.results", "HostSummary": "lac_core.verdicts.results",
    "SweepResult": "lac_core.verdicts.results", "MarkerResult": "lac_core.verdicts.results",
    "HostResult": "lac_core.verdicts.results", "SteeringResult": "lac_core.verdicts.results",
    # running without pytest
    "Settings": "lac_core.run.settings", "Session": "lac_core.run.session",
    "result": "lac_core.run.compute", "load_model": "lac_core.run.compute",
    # errors
    "LacError": "lac_core.errors", "UsageError": "lac_core.errors",
}
_RENAMED = {"register_claim": "register"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'lac_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), _RENAMED.get(name, name))
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
