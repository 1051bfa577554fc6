"""The claims' thresholds as typed, frozen values, loaded and checked from fixtures/claims.yaml."""
# Each numeric threshold in the file is `{value: x, why: "..."}`; the rationale is kept for the
# report. An unknown or missing key is an error naming the file and the key, before any work.
from __future__ import annotations

from dataclasses import make_dataclass
from pathlib import Path

import yaml

from ..errors import FixtureError

META = ("title", "paper")  # descriptive keys any section may carry
Names = tuple[str, ...]
FIELDS = {  # section -> {key: type}; one frozen dataclass per section
    "C1": {"probes": Names, "max_depth_fraction": float, "max_median_kl": float},
    "C1L": {"probes": Names, "min_ratio": float},
    "C2": {"probes": Names, "max_cos_x_y": float, "min_cos_xy_sum": float, "min_difference": float},
    "C3": {"min_clean_fraction": float, "min_additive_over_clean": float,
           "max_bare_over_clean": float},
    "C3R": {"min_clean_fraction": float, "min_remove_x_over_clean": float},
    "C4": {"min_host_kl": float, "max_gap_closed": float},
    "C5": {"probes": Names, "max_depth_fraction": float, "min_null_kl": float,
           "max_additive_kl": float, "max_additive_over_null": float},
    "C6": {"probes": Names, "min_null_kl": float, "min_ratio": float},
    "markers": {"stems": Names},
    "per_cell": {"oracle_vs_host_tolerance": float, "additive_vs_null_tolerance": float,
                 "kl_floor": float},
}
SECTIONS = {name: make_dataclass(name, list(f.items()), frozen=True) for name, f in FIELDS.items()}
# every section by name, the rationale of each threshold (why[section][key]) and claim titles
Thresholds = make_dataclass("Thresholds", [*((n, c) for n, c in SECTIONS.items()), ("why", dict),
                                           ("titles", dict)], frozen=True)


def _value(path: Path, where: str, raw, kind):
    if kind is Names:
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            return tuple(raw), None
        raise FixtureError(f"{path}: {where} must be a list of strings, got {raw!r}")
    if isinstance(raw, dict) and set(raw) <= {"value", "why"} \
            and isinstance(raw.get("value"), (int, float)):
        return float(raw["value"]), str(raw.get("why", ""))
    raise FixtureError(f"{path}: {where} must be {{value: <number>, why: <text>}}, got {raw!r}")


def _section(path: Path, name: str, body):
    if not isinstance(body, dict):
        raise FixtureError(f"{path}: section {name!r} must be a mapping of keys")
    unknown = sorted(set(body) - set(FIELDS[name]) - set(META))
    if unknown:
        raise FixtureError(f"{path}: unknown key {name}.{unknown[0]}; "
                           f"allowed: {', '.join(FIELDS[name])}")
    values, why = {}, {}
    for key, kind in FIELDS[name].items():
        if key not in body:
            raise FixtureError(f"{path}: missing key {name}.{key}; add it (see lac's claims.yaml)")
        values[key], why[key] = _value(path, f"{name}.{key}", body[key], kind)
    return SECTIONS[name](**values), {k: v for k, v in why.items() if v is not None}


def load_thresholds(path: Path | str):
    """Read and check the thresholds file; a bad one raises FixtureError naming file and key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FixtureError(f"cannot read thresholds {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise FixtureError(f"{path}: expected a mapping of sections {', '.join(FIELDS)}")
    for name in sorted(set(raw) - set(FIELDS)):
        raise FixtureError(f"{path}: unknown section {name!r}; allowed: {', '.join(FIELDS)}")
    built, why = {}, {}
    for name in FIELDS:
        if name not in raw:
            raise FixtureError(f"{path}: missing section {name!r}")
        built[name], why[name] = _section(path, name, raw[name])
    titles = {name: body["title"] for name, body in raw.items() if "title" in body}
    return Thresholds(**built, why=why, titles=titles)
