"""Shards of one run merged into one results.json (lac_core/merge.py): runs made apart (a CI
matrix, a Slurm array, separate jobs), each a whole results.json, taken as data (JSON, never a
pickle), every derived number and verdict of lac's own claims re-derived from the records by
lac's own rules (a shard whose verdicts do not follow from its numbers is refused, not trusted),
and merged only when they are one run split by model (or grid): same lac source, settings and
grids. The merged document is gated afresh (gating.gate_of) against the expectations given."""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Mapping

from ..errors import LacError
from ..paths import CLAIMS_FILE
from ..report import breakdown, findings
from ..report.document import Plan, report_names
from ..report.reportset import plain_name
from ..report.source import KINDS, RunSource
from ..verdicts import claims as registry
from ..verdicts import uncertainty
from ..verdicts.kinds import Kind
from ..verdicts.results import jsonable
from ..verdicts.thresholds import load_thresholds
from . import gating, provenance
from .provenance import DISTRIBUTION, new_run_id
from .resultsfile import thresholds_json

INFORMATION = ("git_commit", "git_dirty")  # fingerprint fields that inform, never decide
NEEDED = {"fingerprint": dict, "settings": dict, "expectation_keys": dict, "cell_checks": list}
RUN_SAME = ("chat_template", "seed", "claims_planned")  # beyond `settings`, what must agree
PER_UNIT = ("verdicts", "cell_failures", "cell_checks", "anti_steering", *KINDS.values())


class Unmergeable(LacError):
    """Shards that are not one run split apart, or a shard lac will not take: the message names
    the shard (its results.json) and what is wrong."""


@dataclass(frozen=True)
class Shard:
    where: str  # its results.json, as the user named it
    doc: dict


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 70 else text[:60] + "...'"


def check_shape(shard: Shard) -> RunSource:
    """The shard is a results.json a report renders from, holding what a merge needs, with names
    that stay inside a report folder; its RunSource."""
    doc, where = shard.doc, shard.where
    try:
        src = RunSource.of(doc)
    except LacError as exc:
        raise Unmergeable(f"{where}: {exc}") from None
    missing = [k for k, kind in NEEDED.items() if not isinstance(doc.get(k), kind)]
    if missing:
        raise Unmergeable(f"{where}: no {', '.join(missing)}: written by a lac that could not "
                          "merge shards (or edited); rerun the shard with this lac")
    names = report_names(Plan(tuple(src.checked.models),
                              {label: tuple(g.experiments) for label, g in src.grids.items()}))
    outside = [n for n in names if not plain_name(n)]
    if outside:
        raise Unmergeable(f"{where}: a model or grid name would make the report file "
                          f"{_short(outside[0])}, which is not a plain name inside the report "
                          "folder; lac writes only inside --lac-reports")
    keys = doc["expectation_keys"]
    for m in src.checked.models:
        setup = keys["models"][m]
        if not isinstance(setup["setup"], str) or not isinstance(setup["claims"], dict):
            raise TypeError(f"expectation_keys.models.{m}")
    for label in src.grids:
        if not isinstance(keys["grids"][label], str):
            raise TypeError(f"expectation_keys.grids.{label}")
    for c in doc["cell_checks"]:
        if not (isinstance(c["cells"], list) and all(isinstance(x, str) for x in c["cells"])):
            raise TypeError("cell_checks[].cells")
    return src


def own_source() -> dict:
    """What the merging lac is: its version, the hash of its source and the sha256 of its
    claims.yaml (the code and rules it derives verdicts again with)."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "not installed"
    return {"lac": version, "source_sha256": provenance.source_sha256(),
            "claims_sha256": hashlib.sha256(CLAIMS_FILE.read_bytes()).hexdigest()}


def check_source(shard: Shard, mine: Mapping) -> None:
    """The shard ran this lac (version, claims.yaml): its verdicts are re-derived by these rules."""
    fp = shard.doc["fingerprint"]
    differ = [k for k in mine if fp.get(k) != mine[k]]
    if differ:
        theirs = ", ".join(f"{k} {_short(fp.get(k))}" for k in differ)
        ours = ", ".join(f"{k} {_short(mine[k])}" for k in differ)
        raise Unmergeable(f"{shard.where}: ran another lac ({theirs}; this one has {ours}); "
                          "merge with the lac that ran the shards")


def _derived(doc: Mapping, src: RunSource):
    """(list name, index, the entry as lac's code derives it from the records), cheap ones
    first (records, anti-steering, cells), then each verdict of lac's own claims (a user's is
    kept as recorded: a merge does not load its code), so a check can stop at the first."""
    t = src.thresholds
    for kind, name in KINDS.items():
        for i, raw in enumerate(doc[name]):
            r = src.results[(raw["model"], raw["grid_label"], kind)]
            yield name, i, {**asdict(r), "grid_label": raw["grid_label"],
                            **findings.extra(kind, r, t)}
    for i, a in enumerate(doc["anti_steering"]):
        yield "anti_steering", i, {"model": a["model"], "grid": a["grid"],
                                   **breakdown.anti_steering(
                                       src.results[(a["model"], a["grid"], Kind.MARKERS)])}
    checks = {k.name for c in registry.builtin() for k in c.cell_checks}
    failing = {(f["check"], f["model"], f["grid"]): f for f in doc["cell_failures"]}
    for c in doc["cell_checks"]:
        key = (c["check"], c["model"], c["grid"])
        if c["check"] in checks:
            check = registry.CELL_CHECKS[c["check"]]
            r = src.results[(c["model"], c["grid"], check.experiment)]
            fails = sorted(x for x in c["cells"] if check.check(r, x, t))
            failing[key] = {"check": key[0], "model": key[1], "grid": key[2], "cells": fails,
                            "experiment": check.experiment, "n_cells": len(r.cells),
                            "worst": [list(w) for w in breakdown.worst_first(key[0], r, fails,
                                                                             t)]}
            if not fails:
                del failing[key]
    for i, (_k, f) in enumerate(sorted(failing.items())):
        yield "cell_failures", i, f
    builtin = {c.id for c in registry.builtin()}
    for i, v in enumerate(doc["verdicts"]):
        yield "verdicts", i, v if v["claim"] not in builtin else {
            **asdict(uncertainty.judge(v["claim"], src.results[
                (v["model"], v["grid"], registry.CLAIMS[v["claim"]].experiment)], t)),
            "model": v["model"], "grid": v["grid"], "expected": v["expected"]}


def rederive(doc: Mapping, src: RunSource | None = None) -> dict:
    """`doc` with everything derived from its records derived again by lac's code: each record's
    summaries and findings, anti-steering, and the verdicts, failing cells and worst cells of
    lac's own claims (what a run whose records these are would have written)."""
    out = {**doc, **{name: [] for name in ("anti_steering", "cell_failures", "verdicts",
                                           *KINDS.values())}}
    for name, _i, entry in _derived(doc, src or RunSource.of(doc)):
        out[name].append(entry)
    return jsonable(out)


def check_numbers(shard: Shard, src: RunSource) -> None:
    """Every number a shard derives from its records, and every verdict and failing cell of
    lac's own claims, is what lac's code derives from those records under lac's thresholds
    (rederive): a shard edited after its run, or written by other code, is refused naming what
    does not follow. Refused rather than recomputed: a shard whose file says one thing and whose
    numbers another has been changed by something other than lac, so none of it is trusted."""
    doc, where = shard.doc, shard.where
    own = jsonable(thresholds_json(load_thresholds(CLAIMS_FILE))["sections"])
    edited = [n for n in own if doc["thresholds"]["sections"].get(n) != own[n]]
    if edited:
        raise Unmergeable(f"{where}: thresholds of {', '.join(edited)} differ from lac's "
                          "claims.yaml that its fingerprint names; the file was edited")
    ran = {(c["check"], c["model"], c["grid"]) for c in doc["cell_checks"]}
    for f in doc["cell_failures"]:
        if (f["check"], f["model"], f["grid"]) not in ran:
            raise Unmergeable(f"{where}: cell check {f['check']} on {f['model']} / {f['grid']} "
                              "failed on cells it never ran on; refused")
    counts = {}
    for name, i, entry in _derived(doc, src):
        got, said = jsonable(entry), (doc[name][i] if i < len(doc[name]) else {})
        counts[name] = i + 1
        if got != said:
            what = " ".join(str(got.get(k)) for k in ("claim", "check", "model", "grid")
                            if k in got)
            bad = sorted(k for k in got.keys() | said.keys() if got.get(k) != said.get(k))
            raise Unmergeable(f"{where}: {name}[{i}] ({what}): {', '.join(bad)} "
                              f"{'does' if len(bad) == 1 else 'do'} not follow from its "
                              "numbers (lac's rules give "
                              f"{_short(got.get('status', got.get(bad[0])))}); refused")
    for name in ("cell_failures",):
        if counts.get(name, 0) != len(doc[name]):
            raise Unmergeable(f"{where}: {name}: {len(doc[name])} entries, but its numbers give "
                              f"{counts.get(name, 0)}; refused")


def _comparable(doc: Mapping) -> dict:
    """Everything that must agree between shards, by a name the refusal can say."""
    fp, run = doc["fingerprint"], doc["run"]
    out = {f"fingerprint.{k}": v for k, v in fp.items()
           if k not in INFORMATION and k != "grids_sha256"}
    out.update({f"settings.{k}": v for k, v in doc["settings"].items()})
    out.update({f"run.{k}": run.get(k) for k in RUN_SAME})
    out.update({"claims": doc["claims"], "thresholds": doc["thresholds"],
                "expectation_keys.claims": doc["expectation_keys"]["claims"]})
    return out


def _grids(doc: Mapping) -> dict:
    """Each grid by label: its content (not where its file was) and its keys."""
    keys, sha = doc["expectation_keys"]["grids"], doc["fingerprint"].get("grids_sha256", {})
    return {label: ({k: v for k, v in g.items() if k != "source"}, keys.get(label),
                    sha.get(label)) for label, g in doc["run"]["grids"].items()}


def differences(a: Shard, b: Shard) -> list[str]:
    """What keeps two shards from being one run split apart: each field that differs."""
    ca, cb = _comparable(a.doc), _comparable(b.doc)
    out = [f"{k} ({_short(ca.get(k))} / {_short(cb.get(k))})"
           for k in sorted(ca.keys() | cb.keys()) if ca.get(k) != cb.get(k)]
    ga, gb = _grids(a.doc), _grids(b.doc)
    out += [f"grid {label} (other content under one name)"
            for label in sorted(ga.keys() & gb.keys()) if ga[label] != gb[label]]
    return out


def units(doc: Mapping) -> dict:
    """(model, grid) -> what the run holds of it, list by list (a verdict's expected status
    aside: the merge's expectations decide it)."""
    out: dict = {}
    for name in PER_UNIT:
        for item in doc[name]:
            grid = item["grid_label"] if name in KINDS.values() else item["grid"]
            item = {k: v for k, v in item.items() if not (name == "verdicts" and k == "expected")}
            out.setdefault((item["model"], grid), {}).setdefault(name, []).append(item)
    return out


def _sort_key(name: str):
    if name in KINDS.values():
        return lambda x: (x["model"], x["grid_label"])
    first = {"verdicts": "claim", "cell_failures": "check", "cell_checks": "check"}.get(name)
    return lambda x: ((x[first],) if first else ()) + (x["model"], x["grid"])


def _same(values: list):
    """The value all shards share, else None (each shard's stays in run.shards)."""
    return values[0] if all(v == values[0] for v in values) else None


def _union(dicts) -> dict:
    out = {}
    for d in dicts:
        for k, v in d.items():
            out.setdefault(k, v)
    return out


def merged_run(shards: list[Shard], args) -> dict:
    """run of the merged document: the shards' lists joined (each not_run entry naming its
    shard: `shard`), the agreed fields kept, those that say where or when a shard ran kept per
    shard in `shards` (null at the top when they differ)."""
    runs = [s.doc["run"] for s in shards]
    joined = {
        "run_id": new_run_id(time.time()), "started": min(r["started"] for r in runs),
        "tests_interrupted": sorted({t for r in runs for t in r["tests_interrupted"]}),
        "not_run": sorted(({**n, "shard": s.where} for s, r in zip(shards, runs)
                           for n in r["not_run"]),
                          key=lambda n: (n["claim"], n["model"], n["grid"])),
        "wall_seconds": round(sum(r["wall_seconds"] for r in runs), 1),
        "models_requested": list(dict.fromkeys(m for r in runs for m in r["models_requested"])),
        "grids": _union(r["grids"] for r in runs),
        "grids_sha256": _union(r.get("grids_sha256", {}) for r in runs),
        "models_planned": list(dict.fromkeys(m for r in runs for m in r["models_planned"])),
        "timings": sorted(_union({tuple(t[:3]): t for t in r["timings"]}
                                 for r in runs).values()),
        "load_seconds": _union(r["load_seconds"] for r in runs),
        "resume_cache_not_used": [n for r in runs for n in r["resume_cache_not_used"]],
        "args": list(args)}
    for name in ("seconds", "from_resume_cache", "failed"):
        joined[name] = dict(sorted(_union(r[name] for r in runs).items()))
    run = {k: joined[k] if k in joined else _same([r.get(k) for r in runs]) for k in
           dict.fromkeys(k for r in runs for k in r)}
    run["status"] = "PARTIAL" if run["not_run"] or run["tests_interrupted"] or any(
        r["status"] != "COMPLETE" for r in runs) else "COMPLETE"
    run["shards"] = [{"results": s.where, **{k: r.get(k) for k in (
        "run_id", "started", "status", "wall_seconds", "git_commit", "git_dirty", "platform",
        "torch_threads", "device_option", "args")}} for s, r in zip(shards, runs)]
    return run


@contextmanager
def _naming(shard: Shard):
    """A field missing or of another type in a shard: one error naming it, never a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise Unmergeable(f"{shard.where}: not a results.json lac wrote ({type(exc).__name__}: "
                          f"{_short(str(exc))}); pass the results.json of a lac run") from None


def merge(shards: list[Shard], folders, args=()) -> dict:
    """One results.json of the shards, gated against the expectations in `folders`
    (gating.expectation_folders); Unmergeable naming the shard and why."""
    if not shards:
        raise Unmergeable("no shard given; name each shard's results.json or report folder")
    shards = [s for i, s in enumerate(shards)  # one file named twice (or copied) counts once
              if not any(s.doc == t.doc for t in shards[:i])]
    mine, sources = own_source(), []
    for s in shards:
        with _naming(s):
            sources.append(check_shape(s))
            check_source(s, mine)
    for s in shards[1:]:
        with _naming(s):
            differ = differences(shards[0], s)
        if differ:
            raise Unmergeable(f"{shards[0].where} and {s.where} are not one run split apart: "
                              f"they differ in {'; '.join(differ)}; run every shard with the "
                              "same lac, settings and grids")
    for s, src in zip(shards, sources):
        with _naming(s):
            check_numbers(s, src)
    taken, owner, parts = {}, {}, {name: [] for name in PER_UNIT}
    for s in shards:
        for key, unit in units(s.doc).items():
            if key in taken:
                if taken[key] != unit:
                    raise Unmergeable(f"{' / '.join(key)} is in {owner[key]} and {s.where} with "
                                      "other results; a model and grid is merged from one "
                                      "shard (or from shards holding the very same results)")
                continue
            taken[key], owner[key] = unit, s.where
    for key, unit in taken.items():
        for name, items in unit.items():
            parts[name] += items
    models = {}
    for s in shards:
        for m, p in s.doc["models"].items():
            if m in models and models[m][1] != p:
                differ = sorted(k for k in p.keys() | models[m][1].keys()
                                if p.get(k) != models[m][1].get(k))
                raise Unmergeable(f"{m} is in {models[m][0]} and {s.where} with another "
                                  f"provenance ({', '.join(differ)}); merge each model from "
                                  "shards that ran it alike")
            models.setdefault(m, (s.where, p))
    first = shards[0].doc
    keys = [s.doc["expectation_keys"] for s in shards]
    fps = [s.doc["fingerprint"] for s in shards]
    doc = {**{k: v for k, v in first.items()},
           "run": merged_run(shards, args),
           "models": dict(sorted((m, p) for m, (_w, p) in models.items())),
           **{name: sorted(items, key=_sort_key(name)) for name, items in parts.items()},
           "fingerprint": {**{k: v for k, v in fps[0].items()},
                           **{k: _same([fp.get(k) for fp in fps]) for k in INFORMATION},
                           "grids_sha256": _union(fp.get("grids_sha256", {}) for fp in fps)},
           "expectation_keys": {"grids": _union(k["grids"] for k in keys),
                                "claims": keys[0]["claims"],
                                "models": _union(k["models"] for k in keys)}}
    book = gating.DocBook(doc["expectation_keys"], tuple(folders))
    doc["verdicts"] = [{**v, "expected": book.status(v["claim"], v["model"], v["grid"])}
                       for v in doc["verdicts"]]
    refused = [f"shard {s.where}: {r}" for s in shards
               for r in (s.doc.get("regression_gate") or {}).get("refused") or ()]
    gate = gating.gate_of(doc, folders, refused=refused)
    doc["run"]["without_expectations"] = list(gate.without_expectations)
    doc["regression_gate"] = gate.to_json()
    return jsonable(doc)


def partial(shards: list[Shard]) -> list[str]:
    """The shards that were PARTIAL, by their results.json."""
    return [s.where for s in shards if s.doc["run"]["status"] != "COMPLETE"]
