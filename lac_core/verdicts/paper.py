"""The paper's published per-cell outputs (fixtures/paper_results) as the summaries rules read."""
from __future__ import annotations

import json

from . import claims as registry
from .kinds import Kind
from .metrics import Summary
from .results import GEOMETRY_STATS, HostSummary, MarkerSummary, SweepSummary
from ..paths import FIXTURES

PAPER = FIXTURES / "paper_results"
SWEEP_FILES = {
    ("gemma-2-2b-it", "short"): "v15_gemma2b_localized_positions.json",
    ("qwen2.5-1.5b-instruct", "short"): "v15_qwen15_localized_positions.json",
    ("qwen2.5-3b-instruct", "short"): "v15_qwen3b_localized_positions.json",
    ("gemma-2-2b-it", "long"): "v16_gemma2b_diverse_grid.json",
    ("qwen2.5-1.5b-instruct", "long"): "v16_qwen15_diverse_grid.json",
}
PAPER_MODEL = "gemma-2-2b-it"  # the marker and host-injection runs


def _read(name: str) -> dict:
    return json.loads((PAPER / name).read_text())


def _given(s: dict) -> Summary:
    """A summary as the paper stored it (median, iqr, min, max; cell count not stored)."""
    return Summary(s["median"], s["iqr"][0], s["iqr"][1], s["min"], s["max"], -1)


def sweep_summary(model: str, grid: str) -> SweepSummary:
    d = _read(SWEEP_FILES[(model, grid)])
    layers = tuple(int(x) for x in d["layers_to_test"])
    kl = {
        probe: {int(layer): Summary.of(v["per_cell"].values()) for layer, v in per_layer.items()}
        for probe, per_layer in d["causal"].items()
    }
    geo = {
        probe: {int(layer): {s: _given(v[s]) for s in GEOMETRY_STATS if s in v}
                for layer, v in per_layer.items()}
        for probe, per_layer in d["decomposition"].items()
    }
    return SweepSummary(label=f"paper {model} / {grid}", n_layers=d["n_layers"], layers=layers,
                        kl_add=kl, kl_null=None, geometry=geo)


def marker_data() -> dict:
    return _read("v17_behavioral_markers.json")


def marker_summary() -> MarkerSummary:
    s = marker_data()["summary"]
    names = {"clean": "clean", "additive": "additive", "remove_x": "remove_X", "bare": "bare"}
    return MarkerSummary(
        label=f"paper {PAPER_MODEL} / markers", n_cells=s["clean"]["total_cells"],
        any={k: s[v]["any_present_count"] for k, v in names.items()},
        distinct_mean={k: s[v]["distinct_mean"] for k, v in names.items()},
    )


def host_summary() -> HostSummary:
    single = _read("v14b_v2.json")["results"]
    multi = _read("v14e_multilayer.json")["results"]
    host = {c: v["kl_host_clean"] for c, v in single.items()}
    interventions = {"oracle": {c: v["kl_oracle"] for c, v in single.items()},
                     "cached": {c: v["kl_cached"] for c, v in single.items()}}
    for key, v in multi.items():
        interventions["layers " + key.replace("_", ",")] = v["kls"]
    return HostSummary.of(f"paper {PAPER_MODEL} / markers", host, interventions)


def tables() -> dict:
    """The paper's headline numbers (fixtures/paper_tables.json, a copy of its tables.json)."""
    return json.loads((FIXTURES / "paper_tables.json").read_text())


def published(experiment: str) -> list[tuple[str, str]]:
    """(model, grid) of each of the paper's published runs of an experiment: a sweep per model
    and grid, the marker and host-injection runs on Gemma-2-2B's marker grid."""
    return list(SWEEP_FILES) if experiment == Kind.SWEEP else [(PAPER_MODEL, "markers")]


def verdicts_keys() -> list[tuple[str, str, str]]:
    """(claim, model, grid) of every verdict `verdicts` gives, without computing any: each of
    lac's claims on each published run of its experiment."""
    return [(c.id, m, g) for c in registry.builtin() for (m, g) in published(c.experiment)]


def _builtin(experiment: str) -> list:
    return [c for c in registry.builtin() if c.experiment == experiment]


def verdicts(t) -> dict:
    """The rules on the paper's own data, by (claim, model, grid): the formalization's first test,
    and the paper's verdict the report prints beside ours."""
    out = {}
    for (model, grid) in SWEEP_FILES:
        s = sweep_summary(model, grid)
        for c in _builtin(Kind.SWEEP):
            out[(c.id, model, grid)] = c.rule(s, getattr(t, c.id))
    for c in _builtin(Kind.MARKERS):
        out[(c.id, PAPER_MODEL, "markers")] = c.rule(marker_summary(), getattr(t, c.id))
    for c in _builtin(Kind.HOST):
        out[(c.id, PAPER_MODEL, "markers")] = c.rule(host_summary(), getattr(t, c.id))
    return out
