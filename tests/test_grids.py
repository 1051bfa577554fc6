"""Grid files: every validation error names file, key and fix before any model loads (nothing
is written); the paper's grids in fixtures/grids/ are the paper's data, unchanged."""
import json
import subprocess
import sys

import pytest
import yaml

from lac_core.errors import GridError
from lac_core.grids import GRID_DIR, load_grid, resolve_grid
from lac_core.settings import ROOT

PAPER = ROOT.parent / "shared" / "paper" / "grids.json"


def _example() -> dict:
    return yaml.safe_load((GRID_DIR / "example.yaml").read_text())


def _write(tmp_path, data, name="g.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["personas"].pop("nurse") and d["personas"].pop("astronomer"), "'personas' must map at least 2"),
    (lambda d: d.update(tasks={"bread": "Bake."}), "'tasks' must map at least 2"),
    (lambda d: d.pop("baseline"), "'baseline' must map"),
    (lambda d: d["baseline"].update(persona=d["personas"]["pirate"]), "baseline persona and task must differ"),
    (lambda d: d.update(template="As {persona}"), "'template' must contain {persona} and {task}"),
    (lambda d: d.update(template="As {persona}, {task} {tone}"), "no other field"),
    (lambda d: d["markers"].update(chef=["knife"]), "'markers' may only list the grid's personas"),
    (lambda d: d["markers"].update(pirate=[]), "markers.pirate must be a non-empty list"),
    (lambda d: d["markers"].update(pirate=["arr", " "]), "markers.pirate must be a non-empty list"),
    (lambda d: d.update(experiments=["sweep", "probe"]), "'experiments' must list some of"),
    (lambda d: d["markers"].pop("nurse"), "needs a marker list for every persona"),
    (lambda d: d.update(colour="blue"), "unknown key 'colour'"),
])
def test_invalid_grid_names_file_and_key(tmp_path, mutate, message):
    data = _example()
    mutate(data)
    if message == "needs a marker list for every persona":
        data["experiments"] = ["sweep", "markers"]
    path = _write(tmp_path, data)
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("name, text", [
    ("dup.yaml", "baseline: {persona: a, task: b}\npersonas: {x: X, x: Y}\ntasks: {t: T, u: U}\n"),
    ("dup.json", '{"baseline": {"persona": "a", "task": "b"}, "personas": {"x": "X", "x": "Y"}}'),
])
def test_a_duplicate_key_is_an_error_not_an_overwrite(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(GridError, match="duplicate key 'x'") as err:
        load_grid(path)
    assert str(path) in str(err.value)


def test_default_experiments_follow_the_contents(tmp_path):
    assert load_grid(GRID_DIR / "example.yaml").experiments == ("sweep", "markers", "host")
    data = _example()
    del data["markers"]
    assert load_grid(_write(tmp_path, data)).experiments == ("sweep", "host")
    same = load_grid(_write(tmp_path, data, "g.json"))
    assert same.key == load_grid(_write(tmp_path, data)).key  # the content decides, not the format
    data["personas"]["pirate"] += "!"
    assert load_grid(_write(tmp_path, data, "g.yaml")).sha256 != same.sha256


def test_unknown_grid_and_missing_file():
    with pytest.raises(GridError, match="unknown grid 'nope'.*example, long, markers, short"):
        resolve_grid("nope")
    with pytest.raises(GridError, match="does not exist"):
        resolve_grid("/no/such/grid.yaml")


@pytest.mark.skipif(not PAPER.exists(), reason="../shared/paper is not beside this checkout")
def test_paper_grid_files_are_the_papers_data():
    """The three grid files hold exactly the paper's grids.json: same texts, same order, so every
    result computed from them is the one computed from the paper's file."""
    paper = json.loads(PAPER.read_text())
    for name, g in paper["grids"].items():
        grid = resolve_grid(name)
        assert list(grid.personas.items()) == list(g["personas"].items())
        assert list(grid.tasks.items()) == list(g["tasks"].items())
        assert (grid.baseline_persona, grid.baseline_task) == (paper["baseline"]["persona"], paper["baseline"]["task"])
        assert grid.template == paper["template"]
        assert grid.markers == ({k: paper["markers"][k] for k in g["personas"]} if name == "markers" else None)
    assert [resolve_grid(n).experiments for n in ("short", "long", "markers")] == [
        ("sweep",), ("sweep",), ("markers", "host")]


def _pytest(*args, cwd=ROOT):
    cmd = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args, message", [
    (["--grid", "{bad}"], "duplicate key 'personas'"),
    (["--grid", "nope"], "unknown grid 'nope'"),
    (["--model", "tiny-llama", "--lac-layers", "3,9"], "layer 9 is out of range for a model with 8 layers"),
    (["--lac-probes", "p_last,g3"], "unknown probe g3"),
    (["--model", "gemma-3-270m"], "has no chat template of its own; pass --chat-template"),
    (["--model", "tiny-llama", "--chat-template", "gemma", "--no-chat-template"], "exclude each other"),
    (["--model", "{dir}"], "is not a model: no config.json with weights and no *.gguf found"),
    (["--model", "{two}"], "holds several GGUF files (a.gguf, b.gguf)"),
    (["--lac-token-budget", "0"], "--lac-token-budget 0: must be a positive number"),
])
def test_bad_input_stops_the_session_before_any_work(tmp_path, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text((GRID_DIR / "example.yaml").read_text() + "\npersonas: {pirate: again}\n")
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two" / name).write_bytes(b"GGUF")
    (tmp_path / "empty").mkdir()
    args = [a.format(bad=bad, dir=tmp_path / "empty", two=tmp_path / "two") for a in args]
    out = _pytest(*args, "--lac-reports", str(tmp_path / "reports"))
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    assert message in out.stderr and out.stderr.count("lac:") == 1
    assert not (tmp_path / "reports").exists()


def test_collect_only_loads_no_model(tmp_path):
    """Collection never fetches or loads a model (an empty weights cache stays empty)."""
    cmd = [sys.executable, "-m", "pytest", "claims/", "--collect-only", "-q", "-p", "no:cacheprovider",
           "--model", "gemma-3-270m", "--chat-template", "gemma", "--lac-reports", str(tmp_path / "r")]
    env = {**__import__("os").environ, "LAC_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0 and "tests collected" in out.stdout
    assert "fetching" not in out.stderr and not (tmp_path / "cache").exists() and not (tmp_path / "r").exists()
