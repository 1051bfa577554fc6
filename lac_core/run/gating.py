"""The regression gate: a run's verdicts and deciding numbers against the model's recorded
expectations, and the checks on the expectations folder made before anything loads."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import UsageError
from ..paths import EXPECTED, FIXTURES, ROOT
from ..verdicts import expected
from ..verdicts.gate import FAILED, NOT_APPLIED, PASSED, CellOutcome, Changed, Drift, GateOutcome
from .settings import Settings


def expectation_folders(expected_dir) -> tuple[Path, ...]:
    """The folders a run's expectations are read from, in order: --lac-expected-dir, then the ones
    lac ships (once when they are one folder), which fill the claims the user's lack."""
    return tuple(dict.fromkeys(Path(d).resolve() for d in (expected_dir, EXPECTED)))


@dataclass
class DocBook:
    """The expectations a results.json is held to, over data alone: the keys the run recorded
    (results.json's `expectation_keys`: each model's setup and each claim's, each grid's key,
    each claim's cell checks) and the expectation files in `folders`, each read once. It does
    what the session's own book does with the live settings, so a merge of shards is gated as
    one run of them all would be."""

    keys: Mapping
    folders: tuple
    read: dict = field(default_factory=dict)  # model -> its expectations, folder by folder
    composed: dict = field(default_factory=dict)  # (model, grid) -> key()

    def layers(self, model: str) -> tuple:
        if model not in self.read:
            self.read[model] = tuple(e for d in self.folders
                                     if (e := expected.load(model, Path(d))) is not None)
        return self.read[model]

    def key(self, model: str, grid: str) -> tuple:
        """(expectations, setup, grid key) of (model, grid), composed claim by claim."""
        if (model, grid) not in self.composed:
            m = self.keys["models"][model]
            setup, key = m["setup"], self.keys["grids"][grid]
            section = expected.compose(self.layers(model), m["claims"], key, self.keys["claims"])
            self.composed[(model, grid)] = (
                expected.Expectations(model, {setup: {key: section}}) if section else None,
                setup, key)
        return self.composed[(model, grid)]

    def status(self, claim: str, model: str, grid: str) -> str | None:
        """The verdict recorded for the claim on (model, grid); None: none."""
        exp, setup, key = self.key(model, grid)
        return exp.verdict(setup, key, claim) if exp else None

    def unexpected(self, verdicts) -> list[str]:
        """"model / setup / grid" of `verdicts` ((claim, model, grid) keys) with nothing recorded
        for any claim that ran there: the paper's rules decided them."""
        out, ran = [], {}
        for c, m, g in verdicts:
            claims = self.keys["models"][m]["claims"]
            if c in claims:
                ran.setdefault((m, g, claims[c]), []).append(c)
        for (m, g, setup), claims in sorted(ran.items()):
            layers, key = self.layers(m), self.keys["grids"][g]
            if any(expected.claim_entry(exp.section(setup, key), c,
                                        self.keys["claims"].get(c, ()))
                   for exp in layers for c in claims):  # some claim that ran has an entry
                continue
            others = sorted({k for exp in layers for k in exp.other_kernels(setup, key)})
            out.append(f"{m} / {setup} / {key}" + (
                f" (recorded only for {', '.join(others)}: bfloat16 and float16 numbers "
                "depend on the kernels, so record this machine's with --lac-update-baselines)"
                if others else ""))
        return out


def gate_of(doc: Mapping, folders, rewritten: tuple[str, ...] | None = None, refused=(),
            regen_all: bool = False) -> GateOutcome:
    """The regression gate's outcome from a results.json document (parsed) and the expectations
    folders (expectation_folders), pure over data: what `gate` finds on the live session, from
    the file, so a merge of shards gets one gate. `rewritten`: None unless the run rewrote the
    expectations (what it changed); `refused`: results not taken in, and why (each fails it);
    `regen_all`: a rewrite under --lac-regen-all needs no review. Drifts are listed by model
    and grid, then quantity."""
    refused = tuple(refused)
    if rewritten is not None:
        changes = tuple(rewritten)
        return GateOutcome(NOT_APPLIED, "this run rewrote the expectations", refused=refused,
                           updating=True, rewritten=changes,
                           review=bool(changes) and not regen_all)
    book = DocBook(doc["expectation_keys"], tuple(folders))
    verdicts = {(v["claim"], v["model"], v["grid"]): v for v in doc["verdicts"]}
    expect = {k: book.status(*k) for k in verdicts}
    drift = []
    for model, grid in sorted({(m, g) for _c, m, g in verdicts}):
        exp, setup, key = book.key(model, grid)
        base = ((exp.section(setup, key) if exp else None) or {}).get("baselines")
        if base:
            now = {q: x for (c, m, g), v in verdicts.items() if (m, g) == (model, grid)
                   for q, x in expected.part_numbers(c, ((p["name"], p.get("numbers"))
                                                         for p in v["parts"])).items()}
            drift += [Drift(model, grid, **d) for d in expected.beyond(base, now)]
    changed = [Changed(c, m, g, expect[(c, m, g)], v["status"])
               for (c, m, g), v in sorted(verdicts.items())
               if expect[(c, m, g)] is not None and expect[(c, m, g)] != v["status"]]
    failed = bool(drift or changed or refused)
    without = tuple(book.unexpected(verdicts))
    status, why = FAILED if failed else PASSED, ""
    if not failed and without and all(e is None for e in expect.values()):
        # nothing was recorded for anything that ran: a gate that compared nothing did not pass
        status, why = NOT_APPLIED, ("no expectations recorded for what ran, so the paper's rules "
                                    "decided each verdict: " + ", ".join(without))
    failures = {(f["check"], f["model"], f["grid"]): set(f["cells"]) for f in doc["cell_failures"]}
    cells = []
    for c in sorted(doc["cell_checks"], key=lambda c: (c["check"], c["model"], c["grid"])):
        check, model, grid = c["check"], c["model"], c["grid"]
        exp, setup, key = book.key(model, grid)
        failed_cells = failures.get((check, model, grid), set())
        for cell in sorted(c["cells"]):
            expect_fail = bool(exp and exp.cell_fails(setup, key, check, cell))
            if expect_fail != (cell in failed_cells):
                cells.append(CellOutcome(check, model, grid, cell,
                                         "fails" if expect_fail else "passes",
                                         "fails" if cell in failed_cells else "passes"))
    return GateOutcome(status, why, tuple(drift), tuple(changed), without, tuple(cells), refused)


REVIEW = ("lac: expectations rewritten (--lac-update-baselines): review the changes above, then "
          "rerun without it")


def check_expectations_folder(s: Settings) -> None:
    """The expectations folder is usable, checked before anything is loaded or downloaded."""
    where = s.expected_dir
    if os.path.lexists(where) and not where.is_dir():
        raise UsageError(f"--lac-expected-dir {where} is not a folder; pass the folder of the "
                         "per-model expectation files")
    if not where.exists() and not s.updating:
        raise UsageError(f"--lac-expected-dir {where} does not exist, so no expectations would "
                         "be read and the regression gate would be off; pass an existing "
                         "folder, or --lac-update-baselines to record into a new one")
    if s.updating and where == EXPECTED and FIXTURES != ROOT / "fixtures":
        raise UsageError("lac is installed: it never writes into its own package; pass "
                         "--lac-expected-dir DIR to record expectations in a folder of yours")
    if s.updating:
        expected.check_writable(where)
