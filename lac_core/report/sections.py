"""REPORT.md's experiment sections, 1 to 4 in that order under stable anchors (the verdict
matrix links to them), and its provenance. Every number comes from the run's records (results.json)."""
from __future__ import annotations

from . import findings
from .tables import ANCHORS, fmt, table
from ..verdicts import paper
from ..protocol.grids import paper_grid
from ..verdicts.kinds import Kind
from ..verdicts.results import MARKER_CONDITIONS

SAMPLES = 3  # generations shown per marker result
SAMPLE_CHARS = 240
SAMPLE_CONDITIONS = ("clean", "additive", "bare")


def sweep_section(r, seconds=None) -> list[str]:
    s, c = r.summary, r.cost
    head = (f"#### {r.model} / {r.grid} grid ({len(r.cells)} cells, plan {r.plan}, "
            f"{findings.took(seconds)}, {c.get('forward_tokens')} forward tokens "
            f"(floor {c.get('floor_tokens')}), {c.get('forward_layer_tokens')} token-layers "
            f"(floor {c.get('floor_layer_tokens')}))")

    def kl(probe, k):
        a = s.kl_add[probe][k]
        return f"{a.median:.4f} [{a.p25:.4f}, {a.p75:.4f}] / {s.kl_null[probe][k].median:.4f}"

    def geo(probe, k):
        return " / ".join(fmt(s.geometry[probe][k][g].median, 3)
                          for g in ("cos_xy_sum", "cos_x_y", "inter_over_xy"))

    return [head, "", "Median [p25, p75] of the 10-token KL (nats), additive / null (h_BB alone):",
            "",
            *table(["probe", *(f"L{k} ({k / s.n_layers:.2f})" for k in s.layers)],
                   [[p, *(kl(p, k) for k in s.layers)] for p in s.probes]), "",
            "Median cos(dXY, dX+dY) / cos(dX, dY) / |Inter|/|dXY| (cosines, and a ratio of "
            "norms):", "",
            *table(["probe", *(f"L{k}" for k in s.layers)],
                   [[p, *(geo(p, k) for k in s.layers)] for p in s.probes]), ""]


def _paper_markers(r) -> bool:
    """The paper's marker and host numbers sit beside a result only on the paper's own grid."""
    return paper_grid(r.grid, r.grid_sha256) == "markers"


def readable(text: str, limit: int = SAMPLE_CHARS) -> str:
    """A generation as one line of text: line breaks as '⏎', other unprintable characters as
    escapes (random weights write many), cut at `limit` characters."""
    out = "".join(ch if ch.isprintable() else "⏎" if ch == "\n" else
                  f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}" for ch in text)
    out = out.replace("```", "`\u200b``")
    return out[:limit] + ("…" if len(out) > limit else "")


def samples(r) -> list[str]:
    """A few generations (clean / additive / bare) of the cells that decide C3: cells whose
    clean text has a marker, those the additive run lost it in (or the bare prompt kept it)
    first; without any, the grid's first cells, and the report says so."""
    clean = [c for c in r.cells if r.hits[c]["clean"]]
    telling = [c for c in clean if not r.hits[c]["additive"] or r.hits[c]["bare"]]
    cells = list(dict.fromkeys(telling + clean))[:SAMPLES]
    note = "Sample generations of cells whose clean text has a persona marker (C3 counts these)"
    if not cells:
        cells = list(r.cells[:SAMPLES])
        note = ("No cell's clean text has a persona marker, so no cell counts toward C3; the "
                "grid's first cells instead")
    if not any(r.texts.get(c) for c in cells):
        return [f"{note}: results.json holds no generated text for them (only the markers "
                "found, above).", ""]
    lines = [f"{note} ({r.n_new_tokens}-token greedy generations, first {SAMPLE_CHARS} "
             "characters; markers found in brackets; every text is in results.json):", ""]
    for c in cells:
        lines += [f"**{c}**", "", "```text"]
        for cond in SAMPLE_CONDITIONS:
            hits = ", ".join(r.hits[c].get(cond, ())) or "-"
            lines.append(f"{cond:<9} [{hits}] {readable(r.texts.get(c, {}).get(cond, ''))}")
        lines += ["```", ""]
    return lines


def marker_section(r, seconds=None) -> list[str]:
    s, ps = r.summary, paper.marker_summary()
    theirs = _paper_markers(r)
    counts = [[c, f"{s.any[c]}/{s.n_cells}", f"{s.distinct_mean[c]:.2f}",
               f"{ps.any[c]}/{ps.n_cells}" if theirs else "-",
               f"{ps.distinct_mean[c]:.2f}" if theirs else "-"] for c in MARKER_CONDITIONS]
    cells = [[cell, *(", ".join(r.hits[cell][c]) or "-" for c in MARKER_CONDITIONS)]
             for cell in r.cells]
    return [f"#### {r.model} / {r.grid} (layer {r.layer}, p_last)", "",
            *table(["condition", "any-marker (cells)", "distinct markers, mean",
                    "paper Gemma L14 any", "paper distinct mean"], counts), "",
            "Per cell (markers found):", "",
            *table(["cell", *MARKER_CONDITIONS], cells), "", *samples(r)]


def _host_rows(r, layered: bool) -> list[list]:
    s, ph, theirs = r.summary, paper.host_summary(), _paper_markers(r)
    rows = [] if layered else [["host, none", f"{s.median_host:.3f}", "-", "host, none",
                                f"{ph.median_host:.3f}" if theirs else "-", "-"]]
    for name, pname in zip(r.interventions(), ph.median_kl):  # the paper's sets, its numbering
        if name.startswith("layers") == layered:
            rows.append([name, f"{s.median_kl[name]:.3f}", f"{s.median_gap_closed[name]:.3f}",
                         pname, *((f"{ph.median_kl[pname]:.3f}",
                                   f"{ph.median_gap_closed[pname]:.3f}") if theirs
                                  else ("-", "-"))])
    return rows


def _host(layered: bool):
    def section(r, seconds=None) -> list[str]:
        return [f"#### {r.model} / {r.grid} (mid layer {r.layer})", "",
                *table(["intervention", "median KL (nats)", "median gap closed (share)",
                        "paper (Gemma)", "median KL", "gap closed"], _host_rows(r, layered)), ""]
    return section


# (anchor, heading, the record kind it reads, its writer, its introduction), in the paper's order
SECTIONS = [
    (ANCHORS[Kind.SWEEP], "Experiment 1: localized sweep", Kind.SWEEP, sweep_section, ""),
    (ANCHORS[Kind.MARKERS], "Experiment 2: persona markers", Kind.MARKERS, marker_section,
     "Cells whose 80-token greedy generation contains at least one of the persona's markers, "
     "and mean distinct markers per generation. Single words match on word boundaries, phrases "
     "as substrings, stems (`indemnif`) as word prefixes; case-insensitive."),
    (ANCHORS[Kind.HOST], "Experiment 3: host injection", Kind.HOST, _host(False),
     "Median over the marker cells of KL(target || host) on the target's 10 greedy tokens, and "
     "the median gap closed (KL_host - KL_int) / KL_host, a share of the gap."),
    ("experiment-4", "Experiment 4: multi-layer injection", Kind.HOST, _host(True),
     "The same, injecting at a set of layers: the paper's Gemma sets mapped to this depth "
     "(l -> round(l / 26 n))."),
]


def experiments(src, figures: dict) -> list[str]:
    """Experiments 1 to 4, each under its anchor, even when it has no result (it says so)."""
    lines = []
    for anchor, heading, kind, section, intro in SECTIONS:
        results = findings.by_kind(src, kind)
        lines += [f'<a id="{anchor}"></a>', "", f"## {heading}", ""]
        if not results:
            lines += ["No result of this experiment in this run (see the verdict matrix).", ""]
        elif intro:
            lines += [intro, ""]
        for key, r in results:
            lines += section(r, src.timings.get(key))
            if key in figures and kind == Kind.SWEEP:
                lines += [f"![additive KL by layer, {r.model} {r.grid}](figures/{figures[key]})",
                          ""]
    return lines


def provenance(src) -> list[str]:
    run, template = src.run_info(), src.checked.template
    raw = " (raw prompts: the user text after the tokenizer's BOS; p_user_last = p_last)"
    lines = ["## Provenance", "", f"- run id {run['run_id']}, wall time {run['wall_seconds']} s, "
             f"plan {run['plan']}, token budget {run['token_budget']}, {run['seed']}",
             f"- chat template: {template.name}{raw if template.raw else ''}; swept layers "
             f"{run['layers'] or 'the paper fractions'}; probes {', '.join(run['probes'])}",
             *(f"- grid {label}: {g.source}, sha256 {g.sha256}, experiments "
               f"{', '.join(g.experiments)}" for label, g in src.grids.items()),
             *(f"- no expectations recorded for {k}: the paper's rules decided"
               for k in src.unexpected()),
             f"- lac {run['lac']}"
             + (f" (source sha256 {run['source_sha256']})" if run.get("source_sha256") else "")
             + f", git commit {run['git_commit'] or '-'}"
             f"{' (dirty: uncommitted changes)' if run['git_dirty'] else ''}; claims.yaml sha256 "
             f"{run['claims_sha256']}; started {run['started']}; status {run['status']}",
             f"- torch {run['torch']}, transformers {run['transformers']}, numpy {run['numpy']}, "
             f"{run['platform']}",
             f"- command: {command(run['args'])}"]
    for model, p in src.provenance.items():
        lines.append(f"- **{model}**: {p['source']}; sha256 {p['sha256'] or '-'}; "
                     f"{p['architecture']}, {p['n_layers']} layers, d={p['d_model']}; dtype "
                     f"{p['dtype']}; attention {p['attn_implementation']}; device {p['device']}"
                     + (f" (kernels {p['kernels']})" if p.get("kernels") else "") +
                     f"; torch {p['torch']}, "
                     f"transformers {p['transformers']}; chat template {p['chat_template']} "
                     f"(sha256 {p['chat_template_sha256'] or '-'}); load "
                     f"{src.load_seconds.get(model)} s; {p['decoding']}")
        where = ran_on(p)
        if where:
            lines.append(f"  - {where}")
    return lines


def command(args: list) -> str:
    """The command a results.json came from: a pytest run's arguments, or a merge's (its
    run.args start with "merge": lac_core.merge)."""
    if args[:1] == ["merge"]:
        return " ".join(["lac", *args])
    return " ".join(["pytest", *args])


def ran_on(p) -> str | None:
    """Where a model ran, from its provenance: host, platform, CPU, torch threads, GPUs, device,
    dtype, kernel family (and its devices, when recorded); None for a results.json written before
    models named their host."""
    if "hostname" not in p:
        return None
    gpus = [f"GPU {g['name']} ({g['device']}, {g['memory_bytes'] / 2**30:.1f} GiB)"
            for g in p.get("gpus") or ()]
    machine = ", ".join([p.get("platform") or "platform unknown",
                         f"CPU {p.get('cpu') or 'unknown'}",
                         f"{p.get('torch_threads')} torch "
                         f"thread{'' if p.get('torch_threads') == 1 else 's'}", *gpus])
    devices = [str(d) for d in p.get("devices") or ()]  # named when not just `device`
    return (f"ran on host {p['hostname'] or 'unknown'} ({machine}), {p.get('device')}, "
            f"{p.get('dtype')}" + (f", kernels {p['kernels']}" if p.get("kernels") else "")
            + (f", devices {', '.join(devices)}" if devices not in ([], [p.get("device")])
               else ""))
