"""lac: the persona x task claims of "As X, Do Y" as a pytest suite.

The public face: what a user's code imports from `lac_core`. Every name loads on first use (a
module __getattr__), so importing `lac_core` pulls nothing heavy (no torch, transformers, numpy
or matplotlib) until a name is asked for. Writing a claim of your own: docs/own-claim.md.
"""
from __future__ import annotations

import importlib

# module -> the public names it holds (each module imported on first use of one of its names)
_MODULES = {
    # declaring a claim (verdicts.claims) and writing its rule (verdicts.rules)
    "lac_core.verdicts.claims": ("Claim", "CellCheck", "register_claim", "Names", "CellMetric",
                                 "register_metric"),
    "lac_core.verdicts.rules": ("Part", "Verdict", "HOLDS", "FAILS", "INCONCLUSIVE", "combine",
                                "with_precondition"),
    # what a rule reads
    "lac_core.verdicts.metrics": ("Summary",),
    "lac_core.verdicts.results": ("SweepSummary", "MarkerSummary", "HostSummary", "SweepResult",
                                  "MarkerResult", "HostResult", "SteeringResult"),
    # running without pytest
    "lac_core.run.settings": ("Settings",),
    "lac_core.run.session": ("Session",),
    "lac_core.run.compute": ("result", "load_model"),
    "lac_core.models.load": ("LoadedModel",),  # what load_model returns, a claim test's `lm`
    # errors
    "lac_core.errors": ("LacError", "UsageError"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
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
