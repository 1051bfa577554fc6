"""One vocabulary of experiment kinds (issue 37, item 2): lac_core names a kind by its member of
verdicts/kinds.py, never by a bare string, and a member reads as its plain string wherever text is
made, so results.json, resume keys, expectations and test ids are the strings they were."""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import lac_core
from lac_core.verdicts import claims, results
from lac_core.verdicts.kinds import CLAIMED, Kind, Shared

CORE = Path(lac_core.__file__).parent
HOME = CORE / "verdicts" / "kinds.py"  # the vocabulary's own module: the one place they are spelled
WORDS = frozenset(m.value for vocab in (Kind, Shared) for m in vocab)

# The same spellings meaning something else, by (file, enclosing function or class, word): how
# many times it may appear there, and why it is no experiment kind. By enclosing name rather than
# line, so an edit above it does not move it; a new use in the same place changes the count.
OTHER_MEANINGS = {
    # the KL intervention "host" (the host prompt, no vector injected), a key of HostResult.kl
    ("verdicts/results.py", "HostResult.interventions", "host"): (1, "KL intervention"),
    ("verdicts/results.py", "host_summaries", "host"): (3, "KL intervention"),
    ("verdicts/cells.py", "oracle_no_worse", "host"): (4, "KL intervention"),
    ("verdicts/cells.py", "oracle_no_worse_severity", "host"): (1, "KL intervention"),
    ("verdicts/cells.py", "c4_against", "host"): (1, "KL intervention"),
    ("protocol/experiments.py", "host_injection", "host"): (1, "KL intervention"),
    # "markers": results.json's list of marker records (RECORDS' second column)
    ("verdicts/results.py", "<module>", "markers"): (1, "results.json's list name"),
    # "markers": the paper's grid of that name (fixtures/grids/markers.yaml)
    ("verdicts/paper.py", "published", "markers"): (1, "the paper's grid"),
    ("verdicts/paper.py", "verdicts", "markers"): (2, "the paper's grid"),
    ("protocol/grids.py", "paper_grid", "markers"): (1, "the paper's grid"),
    ("run/settings.py", "<module>", "markers"): (1, "the paper's grid (DEFAULT_GRIDS)"),
    ("report/sections.py", "_paper_markers", "markers"): (1, "the paper's grid"),
    ("report/findings.py", "_paper_hits", "markers"): (1, "the paper's grid"),
    # "markers": a grid file's marker lists (its key, Grid.markers) and claims.yaml's section
    ("protocol/grids.py", "_check", "markers"): (1, "a grid file's key"),
    ("protocol/grids.py", "_markers", "markers"): (1, "a grid file's key"),
    ("models/tiny.py", "_corpus", "markers"): (2, "the paper's grid and its key"),
    ("run/session.py", "Session", "markers"): (1, "Grid.markers, a field of run.grids"),
    ("verdicts/thresholds.py", "<module>", "markers"): (1, "claims.yaml's 'markers' section"),
    ("verdicts/claims.py", "register", "markers"): (1, "claims.yaml's section: no claim's id"),
    # "markers": pytest's ini key for declaring marks
    ("suite/plugin.py", "pytest_configure", "markers"): (1, "pytest's ini key"),
}


@dataclass(frozen=True)
class Spelled:
    """A kind spelled as a bare string: where and in what."""

    file: str
    line: int
    scope: str
    word: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.scope}): {self.word!r}"


def _prose(tree: ast.AST) -> set[int]:
    """ids of the string constants that are text, not names: docstrings and f-strings' text."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)):
            out.add(id(body[0].value))
        if isinstance(node, ast.JoinedStr):
            out.update(id(v) for v in node.values if isinstance(v, ast.Constant))
    return out


def _scopes(tree: ast.AST):
    """(node, enclosing qualified name) for every node, '<module>' at the top."""
    def walk(node, scope):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = child.name if scope == "<module>" else f"{scope}.{child.name}"
                yield child, scope
                yield from walk(child, inner)
            else:
                yield child, scope
                yield from walk(child, scope)
    yield from walk(tree, "<module>")


def spelled(root: Path) -> list[Spelled]:
    """Every string constant under `root` equal to a kind's value, outside the vocabulary's own
    module, docstrings and f-strings' text: in a comparison, a dict key or value, a subscript, a
    call's argument, a default, anywhere code holds it."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == HOME.relative_to(CORE).as_posix():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        prose = _prose(tree)
        out += [Spelled(rel, node.lineno, scope, node.value) for node, scope in _scopes(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value in WORDS and id(node) not in prose]
    return out


def unexplained(found: list[Spelled]) -> list[str]:
    """What `spelled` found beyond OTHER_MEANINGS' counts, one line per spelling."""
    seen: dict[tuple, list[Spelled]] = {}
    for s in found:
        seen.setdefault((s.file, s.scope, s.word), []).append(s)
    out = []
    for key, hits in seen.items():
        allowed = OTHER_MEANINGS.get(key, (0, ""))[0]
        if len(hits) > allowed:
            out += [str(s) for s in hits] if allowed == 0 else [
                f"{hits[0]} and {len(hits) - 1} more: {len(hits)} where {allowed} are explained"]
    return out


def test_no_kind_is_spelled_as_a_bare_string():
    problems = unexplained(spelled(CORE))
    assert not problems, ("experiment kinds spelled as bare strings; use lac_core.verdicts.kinds "
                          "(Kind, Shared, FIXTURE), or explain another meaning in OTHER_MEANINGS:\n"
                          + "\n".join(problems))


def test_other_meanings_are_still_there():
    """An explained spelling that no longer occurs is removed from the list, so it cannot hide a
    kind spelled later in the same place."""
    seen = {(s.file, s.scope, s.word) for s in spelled(CORE)}
    stale = [k for k, (n, _why) in OTHER_MEANINGS.items() if n and k not in seen]
    assert not stale, f"OTHER_MEANINGS lists spellings that are gone: {stale}"


def test_the_scan_finds_a_kind_in_each_place_code_holds_one(tmp_path):
    (tmp_path / "m.py").write_text(
        '"""sweep"""\n'
        'def f(kind, r, g):\n'
        '    """host"""\n'
        '    x = f"{kind} host"\n'
        '    if kind == "sweep":\n'
        '        return r["markers"], {"host": 1}, g(kind, "steering"), g(x="residuals")\n'
        '    return ("target",)\n', encoding="utf-8")
    found = sorted((s.line, s.word) for s in spelled(tmp_path))
    assert found == [(5, "sweep"), (6, "host"), (6, "markers"), (6, "residuals"),
                     (6, "steering"), (7, "target")]


def test_a_member_reads_as_its_plain_string():
    members = {Kind.SWEEP: [Kind.MARKERS, Shared.TARGET], "k": (Kind.HOST, Kind.STEERING)}
    plain = {"sweep": ["markers", "target"], "k": ("host", "steering")}
    assert json.dumps(members) == json.dumps(plain)
    assert json.dumps(members, sort_keys=True, indent=1) == json.dumps(plain, sort_keys=True,
                                                                       indent=1)
    for m in (*Kind, *Shared):
        assert (str(m), f"{m}", f"{m:>10}", repr(m), " / ".join((m, m))) == (
            m.value, m.value, f"{m.value:>10}", repr(m.value), f"{m.value} / {m.value}")
        assert m == m.value and hash(m) == hash(m.value) and {m.value: 1}[m] == 1
    assert {("tiny-llama", "example", "sweep"): 1}[("tiny-llama", "example", Kind.SWEEP)] == 1


def test_the_vocabulary_is_what_the_records_and_claims_read():
    assert list(results.RECORDS) == list(Kind)
    assert claims.EXPERIMENTS == CLAIMED
    assert set(results.SUMMARIES) == set(CLAIMED)
