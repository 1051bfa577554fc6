"""Numeric regression gate: the numbers that decide each claim, compared with a per-model baseline.

A verdict can stay the same while its deciding numbers move; a library or model upgrade
that moves one beyond its tolerance fails the session with a message naming the quantity.
"""
from __future__ import annotations

import math

# (absolute floor, relative) tolerance by the kind of number
TOLERANCES = {"cos": (0.01, 0.0), "count": (1.0, 0.0), "ratio": (0.0, 0.15), "default": (0.002, 0.10)}
_SKIP = {"layer", "shallowest", "deepest", "informative_layers", "bound"}


def _kind(name: str) -> str:
    if name.startswith("cos") or name == "difference":
        return "cos"
    if name in ("count", "clean"):
        return "count"
    if name == "ratio":
        return "ratio"
    return "default"


def quantities(verdicts) -> dict[str, float]:
    """Deciding numbers of every part of every verdict: 'claim/grid/part/number' -> value."""
    out = {}
    for (claim, _model, grid), (v, _exp) in verdicts.items():
        for part in v.parts:
            for name, value in part.numbers.items():
                if name in _SKIP or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if not math.isfinite(value):
                    continue
                out[f"{claim}/{grid}/{part.name}/{name}"] = float(value)
    return out


def make_baselines(values: dict[str, float]) -> dict:
    out = {}
    for key, value in sorted(values.items()):
        floor, rel = TOLERANCES[_kind(key.rsplit("/", 1)[1])]
        out[key] = {"value": round(value, 6), "tolerance": round(max(floor, rel * abs(value)), 6)}
    return out


def drift(baselines: dict, current: dict[str, float]) -> list[str]:
    """Messages for every quantity whose current value is outside baseline +- tolerance (two-sided)."""
    msgs = []
    for key, value in sorted(current.items()):
        base = baselines.get(key)
        if base is None:
            continue
        if not abs(value - base["value"]) <= base["tolerance"]:
            msgs.append(f"{key}: baseline {base['value']}, now {value:.6g}, tolerance {base['tolerance']}")
    return msgs
