"""REPORT.md, figures and results.json from one session's state (no torch).

Everything written comes from the session that writes it; the run id, settings and
versions head every file, so results of different runs are never mixed silently.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

from . import paper, rules

FIG_PROBES = ("p_last", "g1", "g2")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(x, nd=4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def paper_verdicts(thresholds) -> dict:
    """The same rules on the paper's data: the paper's number beside ours for each claim and grid."""
    out = {}
    for (model, grid) in paper.SWEEP_FILES:
        if model != paper.PAPER_MODEL:
            continue
        s = paper.sweep_summary(model, grid)
        for claim, fn in rules.SWEEP_RULES.items():
            out[(claim, grid)] = fn(s, thresholds[claim])
    out[("C3", "markers")] = rules.c3(paper.marker_summary(), thresholds["C3"])
    out[("C3R", "markers")] = rules.c3r(paper.marker_summary(), thresholds["C3R"])
    out[("C4", "markers")] = rules.c4(paper.host_summary(), thresholds["C4"])
    return out


def results_json(state, config) -> dict:
    return {
        "schema": "lac-results/1 (see reports/SCHEMA.md)",
        "run": _run_info(state, config),
        "models": {m: p for m, p in state.provenance.items()},
        "verdicts": [
            {**v.to_json(), "model": m, "grid": g, "expected": exp}
            for (c, m, g), (v, exp) in sorted(state.verdicts.items())
        ],
        "cell_failures": [{"check": c, "model": m, "grid": g, "cells": cells}
                          for (c, m, g), cells in sorted(state.cell_failures.items())],
        "sweeps": [r.to_json() for r in state.sweeps.values()],
        "markers": [r.to_json() for r in state.markers.values()],
        "host_injection": [r.to_json() for r in state.hosts.values()],
    }


def _run_info(state, config) -> dict:
    import numpy

    return {
        "run_id": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(state.started)),
        "wall_seconds": round(time.time() - state.started, 1),
        "plan": state.plan,
        "token_budget": state.token_budget,
        "models_requested": state.models,
        "grids": state.grids,
        "load_seconds": state.load_seconds,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "seed": "deterministic: greedy decoding, no sampling; tiny models seed 1234",
        "args": list(config.invocation_params.args),
    }


def _matrix(state) -> list[str]:
    order = {"short": 0, "long": 1, "markers": 2}
    cols = sorted({(m, g) for (_, m, g) in state.verdicts}, key=lambda mg: (mg[0], order.get(mg[1], 9), mg[1]))
    lines = ["| claim | " + " | ".join(f"{m} / {g}" for m, g in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for claim in rules.CLAIMS:
        cells = []
        for m, g in cols:
            v = state.verdicts.get((claim, m, g))
            if v is None:
                cells.append("")
            else:
                exp = v[1]
                cells.append(v[0].status + ("" if exp in (None, v[0].status) else f" (expected {exp})"))
        if any(cells):
            lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return lines


def _claim_details(state, thresholds) -> list[str]:
    theirs = paper_verdicts(thresholds)
    lines = ["| claim | model / grid | verdict | deciding part | numbers | margin | paper (Gemma-2-2B, same rule) |",
             "|---|---|---|---|---|---|---|"]
    for (claim, m, g), (v, _exp) in sorted(state.verdicts.items()):
        d = v.deciding
        pv = theirs.get((claim, g))
        pd = f"{pv.status}: {pv.deciding.name}: {pv.deciding.detail}" if pv and pv.deciding else "-"
        lines.append(f"| {claim} | {m} / {g} | {v.status} | {d.name if d else '-'} | {d.detail if d else ''} | "
                     f"{_fmt(d.margin if d else None)} | {pd} |")
    return lines


def _sweep_tables(result) -> list[str]:
    s = result.summary()
    lines = [f"#### {result.model} / {result.grid} grid ({len(result.cells)} cells, plan {result.plan}, "
             f"{result.cost.get('wall_seconds')} s, {result.cost.get('forward_tokens')} forward tokens "
             f"(floor {result.cost.get('floor_tokens')}), {result.cost.get('forward_layer_tokens')} token-layers "
             f"(floor {result.cost.get('floor_layer_tokens')}))", "",
             "Median [p25, p75] of the 10-token KL (nats), additive / null (h_BB alone):", "",
             "| probe | " + " | ".join(f"L{layer} ({layer / s.n_layers:.2f})" for layer in s.layers) + " |",
             "|---|" + "---|" * len(s.layers)]
    for probe in s.probes:
        row = []
        for layer in s.layers:
            a, n = s.kl_add[probe][layer], s.kl_null[probe][layer]
            row.append(f"{a.median:.4f} [{a.p25:.4f}, {a.p75:.4f}] / {n.median:.4f}")
        lines.append(f"| {probe} | " + " | ".join(row) + " |")
    lines += ["", "Median cos(dXY, dX+dY) / cos(dX, dY) / |Inter|/|dXY|:", "",
              "| probe | " + " | ".join(f"L{layer}" for layer in s.layers) + " |",
              "|---|" + "---|" * len(s.layers)]
    for probe in s.probes:
        row = [" / ".join(_fmt(s.geometry[probe][layer][k].median, 3)
                          for k in ("cos_xy_sum", "cos_x_y", "inter_over_xy")) for layer in s.layers]
        lines.append(f"| {probe} | " + " | ".join(row) + " |")
    return lines + [""]


def figure(result, path: Path) -> str:
    """Figure 1 style: median additive KL by layer (depth fraction), p25-p75 band, null dashed,
    0.1 reference line, the paper's Gemma / Qwen-1.5B curves (same grid) in grey for comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.summary()
    fig, axes = plt.subplots(1, len(FIG_PROBES), figsize=(12, 3.6), sharey=True)
    x = [layer / s.n_layers for layer in s.layers]
    for ax, probe in zip(axes, FIG_PROBES):
        if probe not in s.kl_add:
            continue
        med = [s.kl_add[probe][layer].median for layer in s.layers]
        ax.fill_between(x, [s.kl_add[probe][layer].p25 for layer in s.layers],
                        [s.kl_add[probe][layer].p75 for layer in s.layers], alpha=0.25, color="C0")
        ax.plot(x, med, "o-", color="C0", label=f"{result.model} additive")
        ax.plot(x, [s.kl_null[probe][layer].median for layer in s.layers], "s--", color="C3",
                label="null (h_BB alone)")
        for (pm, pg), style in zip(sorted(paper.SWEEP_FILES), (":", "-.", "--", ":", "-.")):
            if pg != result.grid or pm == "qwen2.5-3b-instruct":
                continue
            ps = paper.sweep_summary(pm, pg)
            if probe in ps.kl_add:
                ax.plot([layer / ps.n_layers for layer in ps.layers],
                        [ps.kl_add[probe][layer].median for layer in ps.layers], style, color="grey",
                        label=f"paper {pm}")
        ax.axhline(0.1, color="k", lw=0.8, ls=":", label="0.1 nats")
        ax.set_yscale("log")
        ax.set_title(probe)
        ax.set_xlabel("depth fraction (layer / n_layers)")
    axes[0].set_ylabel("median 10-token KL (nats)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Additive substitution KL, {result.model}, {result.grid} grid")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path.name


def write_reports(state, config) -> None:
    out = Path(config.getoption("--lac-reports"))
    for stale in [*out.glob("results_*.json"), *out.glob("figures/*.png")]:
        stale.unlink()  # what this run does not rewrite belongs to another run: never leave it beside
    thresholds = rules.load_thresholds()
    data = results_json(state, config)
    _atomic_write(out / "results.json", json.dumps(data, indent=1, default=_default))
    for model in state.provenance:
        per = {**data, "verdicts": [v for v in data["verdicts"] if v["model"] == model],
               "sweeps": [s for s in data["sweeps"] if s["model"] == model],
               "markers": [s for s in data["markers"] if s["model"] == model],
               "host_injection": [s for s in data["host_injection"] if s["model"] == model],
               "models": {model: state.provenance[model]}}
        _atomic_write(out / f"results_{model}.json", json.dumps(per, indent=1, default=_default))
    run = data["run"]
    lines = [f"# lac report: run {run['run_id']}", "",
             "Every number below comes from this one run (settings and versions in Provenance).", "",
             "## Verdicts (claims x models)", "", *_matrix(state), "",
             "## Claim by claim", "", *_claim_details(state, thresholds), ""]
    lines += _extra_sections(state)
    if state.sweeps:
        lines += ["## Localized sweep (experiment 1)", ""]
        for (model, grid), result in sorted(state.sweeps.items()):
            lines += _sweep_tables(result)
            name = figure(result, out / "figures" / f"kl_by_layer_{model}_{grid}.png")
            lines += [f"![additive KL by layer, {model} {grid}](figures/{name})", ""]
    lines += ["## Provenance", "", f"- run id {run['run_id']}, wall time {run['wall_seconds']} s, plan "
              f"{run['plan']}, token budget {run['token_budget']}, {run['seed']}",
              f"- numpy {run['numpy']}, {run['platform']}", f"- command: pytest {' '.join(run['args'])}"]
    for model, p in state.provenance.items():
        lines.append(f"- **{model}**: {p['source']}; sha256 {p['sha256'] or '-'}; {p['architecture']}, "
                     f"{p['n_layers']} layers, d={p['d_model']}; dtype {p['dtype']}; attention "
                     f"{p['attn_implementation']}; device {p['device']}; torch {p['torch']}, transformers "
                     f"{p['transformers']}; load {state.load_seconds.get(model)} s; {p['decoding']}")
    _atomic_write(out / "REPORT.md", "\n".join(lines) + "\n")


def _extra_sections(state) -> list[str]:
    """Marker and host-injection tables (experiments 2-4), when the session ran them."""
    from .report_behaviour import host_tables, marker_tables

    return marker_tables(state) + host_tables(state)


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")
