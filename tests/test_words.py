"""What lac prints and writes says what happened, in lac's own voice: every progress line carries
the `lac:` prefix, the timing line has no empty segment, and a new expectations file names no
command the user may not have run."""
import ast
from pathlib import Path

from lac_core.paths import ROOT


def _say_arguments() -> list[tuple[str, str]]:
    """(file:line, the literal start of the text) of every `.say(...)` call in lac_core whose
    argument is a string or an f-string."""
    out = []
    for path in sorted((ROOT / "lac_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "say" and node.args:
                arg = node.args[0]
                first = arg.values[0] if isinstance(arg, ast.JoinedStr) and arg.values else arg
                text = first.value if isinstance(first, ast.Constant) else ""
                if isinstance(arg, (ast.JoinedStr, ast.Constant)):
                    out.append((f"{path.relative_to(ROOT)}:{node.lineno}", str(text)))
    return out


def test_every_progress_line_lac_says_starts_with_its_prefix():
    """A line lac prints during a run starts with `lac: ` (a worker's line forwarded under
    pytest-xdist starts with `[gwN] ` and carries its own)."""
    said = _say_arguments()
    assert said, "no progress.say call found"
    bare = [f"{where}: {text!r}" for where, text in said if not text.startswith(("lac: ", "["))]
    assert not bare, "progress lines without the lac: prefix:\n" + "\n".join(bare)


def test_the_timing_line_has_no_empty_segment_when_everything_came_from_the_cache():
    from lac_core.suite.plugin import time_line
    assert time_line("tiny-llama", 0.5, [], 1.3) == \
        "time: tiny-llama loaded in 0.5 s; intervals 1.3 s."
    assert time_line("m", 2.0, ["example sweep 5.1 s", "example host 0.1 s"], None) == \
        "time: m loaded in 2.0 s; example sweep 5.1 s, example host 0.1 s."


def test_a_new_expectations_file_names_no_command_the_user_may_not_have_run(tmp_path):
    """A user's expectations are written from their own claims or `--pyargs lac_core.claims`,
    not `pytest claims/`: the header names the option that writes it, not a command."""
    from lac_core.verdicts import expected
    exp = expected.read_for_update("m", tmp_path)
    first = expected.save(exp, tmp_path).read_text().splitlines()[0]
    assert first.startswith("# ") and "--lac-update-baselines" in first, first
    assert "pytest claims/" not in first, first
