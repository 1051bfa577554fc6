"""The claims' thresholds as typed, frozen values, loaded and checked from their files."""
# Each numeric threshold is `{value: x, why: "..."}`; the rationale is kept for the report. The
# sections a file must hold come from the claim registry (claims.py): every claim's section with
# its keys and types, in lac's claims.yaml or, for a user's claim, in the thresholds file its
# declaration names; plus two sections of lac's own (markers, per_cell). An unknown or missing
# section or key is an error naming the file and the key, before any work.
from __future__ import annotations

from dataclasses import dataclass, make_dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import FixtureError, LacError
from ..readfile import THRESHOLDS, Unreadable
from ..yamlfile import load_yaml
from . import claims as registry

META = ("title", "paper")  # descriptive keys any section may carry
Names = registry.Names
OWN = {"markers": {"stems": Names},  # sections of lac's claims.yaml that are no claim's
       "per_cell": {"oracle_vs_host_tolerance": float, "additive_vs_null_tolerance": float,
                    "kl_floor": float}}


@lru_cache(maxsize=None)
def section_type(name: str, fields: tuple):
    """One frozen dataclass per section, its fields typed as declared."""
    return make_dataclass(name, list(fields), frozen=True)


@dataclass(frozen=True)
class Thresholds:
    """Every section by name (`t.C1`, `t.markers`), the rationale of each threshold
    (why[section][key]), claim titles, and the files they came from."""

    sections: dict
    why: dict
    titles: dict
    files: tuple[Path, ...]

    def __getattr__(self, name: str):
        try:
            return self.__dict__["sections"][name]
        except KeyError:
            raise AttributeError(f"no thresholds section {name!r}") from None


def _value(path: Path, where: str, raw, kind):
    if kind is Names:
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            return tuple(raw), None
        raise FixtureError(f"{path}: {where} must be a list of strings, got {raw!r}")
    if isinstance(raw, dict) and set(raw) <= {"value", "why"} \
            and isinstance(raw.get("value"), (int, float)) and not isinstance(raw["value"], bool):
        return float(raw["value"]), str(raw.get("why", ""))
    raise FixtureError(f"{path}: {where} must be {{value: <number>, why: <text>}}, got {raw!r}")


def _section(path: Path, name: str, body, fields: dict):
    if not isinstance(body, dict):
        raise FixtureError(f"{path}: section {name!r} must be a mapping of keys")
    unknown = sorted(set(body) - set(fields) - set(META))
    if unknown:
        raise FixtureError(f"{path}: unknown key {name}.{unknown[0]}; "
                           f"allowed: {', '.join(fields)}")
    values, why = {}, {}
    for key, kind in fields.items():
        if key not in body:
            raise FixtureError(f"{path}: missing key {name}.{key}; add it (see lac's claims.yaml)")
        values[key], why[key] = _value(path, f"{name}.{key}", body[key], kind)
    cls = section_type(name, tuple(fields.items()))
    return cls(**values), {k: v for k, v in why.items() if v is not None}


def _read(path: Path) -> dict:
    try:
        raw = load_yaml(path, THRESHOLDS)
    except (OSError, LacError) as exc:
        why = exc.what if isinstance(exc, Unreadable) else exc  # without the file's name
        raise FixtureError(f"cannot read thresholds {path}: {why}") from None
    if not isinstance(raw, dict):
        raise FixtureError(f"{path}: expected a mapping of sections")
    return raw


def load_thresholds(path: Path | str) -> Thresholds:
    """Read and check lac's thresholds file and every registered claim's own; a bad one raises
    FixtureError naming file and key."""
    path = Path(path)
    wanted = {path: dict(OWN)}  # file -> section -> fields
    for claim in registry.CLAIMS.values():
        wanted.setdefault(Path(claim.thresholds_file or path), {})[claim.id] = claim.thresholds
    sections, why, titles = {}, {}, {}
    for file, expected in wanted.items():
        raw = _read(file)
        for name in sorted(set(raw) - set(expected)):
            raise FixtureError(f"{file}: unknown section {name!r}; allowed: {', '.join(expected)}"
                               " (a claim's section appears once it is registered)")
        for name, fields in expected.items():
            if name not in raw:
                raise FixtureError(f"{file}: missing section {name!r}")
            sections[name], why[name] = _section(file, name, raw[name], fields)
            if isinstance(raw[name], dict) and "title" in raw[name]:
                titles[name] = raw[name]["title"]
    return Thresholds(sections, why, titles, tuple(wanted))
