"""Grid files: every validation error names file, key and fix before any model loads (nothing
is written); the paper's grids in fixtures/grids/ are the paper's data, unchanged."""
import json
import subprocess
import sys

import pytest
import yaml

from lac_core.errors import GridError
from lac_core.protocol.grids import GRID_DIR, load_grid, resolve_grid
from lac_core.run.settings import ROOT

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
    (lambda d: d.update(experiments=[["sweep"]]), "'experiments' must list some of"),  # A4
    (lambda d: d.update(experiments="sweep"), "'experiments' must list some of"),  # A7
    (lambda d: d.update(experiments=["markers", 7]), "'experiments' must list some of"),
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
    (["--lac-grid", "{bad}"], "duplicate key 'personas'"),
    (["--lac-grid", "nope"], "unknown grid 'nope'"),
    (["--lac-model", "tiny-llama", "--lac-layers", "3,9"], "9 is layer 9, out of range for a model with 8 layers"),
    (["--lac-probes", "p_last,g3"], "unknown probe g3"),
    (["--lac-model", "gemma-3-270m"], "has no chat template of its own; pass --lac-chat-template"),
    (["--lac-model", "tiny-llama", "--lac-chat-template", "gemma", "--lac-no-chat-template"], "exclude each other"),
    (["--lac-model", "{dir}"], "is not a model: no config.json with weights and no *.gguf found"),
    (["--lac-model", "{two}"], "holds several GGUF files (a.gguf, b.gguf)"),
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
           "--lac-model", "gemma-3-270m", "--lac-chat-template", "gemma", "--lac-reports", str(tmp_path / "r")]
    env = {**__import__("os").environ, "LAC_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0 and "tests collected" in out.stdout
    assert "fetching" not in out.stderr and not (tmp_path / "cache").exists() and not (tmp_path / "r").exists()


def _grid(tmp_path, personas=None, tasks=None, name="g.yaml", **extra):
    data = {"baseline": {"persona": "someone", "task": "Do something."},
            "personas": personas or {"pirate": "a pirate", "nurse": "a nurse"},
            "tasks": tasks or {"bread": "Bake bread.", "tax": "Explain tax."}, **extra}
    return _write(tmp_path, data, name)


def test_cells_sharing_an_id_are_refused_naming_both(tmp_path):
    """a x b__c and a__b x c are both 'a__b__c': one cell's data would vanish from the results."""
    path = _grid(tmp_path, {"a": "P one", "a__b": "P two"}, {"b__c": "T one", "c": "T two"})
    with pytest.raises(GridError) as err:
        load_grid(path)
    msg = str(err.value)
    assert str(path) in msg and "'a__b__c'" in msg
    assert "persona 'a' x task 'b__c'" in msg and "persona 'a__b' x task 'c'" in msg


def test_heatmaps_take_persona_and_task_from_the_grid(tmp_path):
    """A persona key with '__' (no collision) still lands in its own row: the matrix reads the
    grid's cells, not the id (split at the first '__' it made row 'x' and column 'y__t')."""
    from types import SimpleNamespace

    from lac_core.report import findings
    from lac_core.verdicts.results import MarkerResult

    grid = load_grid(_grid(tmp_path, {"x__y": "P one", "z": "P two"}, {"t": "T one", "u": "T two"}))
    ids = tuple(c.id for c in grid.cells)
    assert ids == ("x__y__t", "x__y__u", "z__t", "z__u")
    hits = {c: {k: ["m"] * (i + 1) for k in ("clean", "additive", "remove_x", "bare")}
            for i, c in enumerate(ids)}
    assert grid.design == {"persona_index": (0, 0, 1, 1), "task_index": (0, 1, 0, 1)}
    r = MarkerResult("m", grid.name, 3, 8, ids, {}, {}, hits, **grid.design)  # .grid: the name
    session = SimpleNamespace(results={("m", "g@label", "markers"): r}, grids={"g@label": grid})
    panels = findings.heatmap_panels(session, "m")
    assert [p.title for p in panels] == [f"g@label: distinct markers, {c}"
                                         for c in ("clean", "additive", "bare")]
    assert {(p.grid, p.kind) for p in panels} == {("g@label", "markers")}
    personas, tasks, values = panels[0].matrix
    assert personas == ["x__y", "z"] and tasks == ["t", "u"]
    assert values.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("template, field", [
    ("As {persona:.3}, {task}", "'{persona:.3}'"),  # truncated every persona to 3 characters
    ("As {persona!r}, {task}", "'{persona!r}'"),  # quoted every persona
    ("As {persona:%s}, {task}", "'{persona:%s}'"),  # passed the check, then every test errored
    ("As {persona:}, {task}", "'{persona:}'"),  # an empty format spec is still a format spec
    ("As {persona}}, {task}", "a lone '}'"),  # an INTERNALERROR (Formatter raised ValueError)
    ("As {persona, {task}", "a lone '{'"),  # an INTERNALERROR too
])
def test_a_template_field_with_spec_conversion_or_lone_brace_is_refused(tmp_path, template, field):
    path = _grid(tmp_path, template=template)
    with pytest.raises(GridError) as err:
        load_grid(path)
    msg = str(err.value)
    assert str(path) in msg and field in msg and "no other field" in msg


def test_every_cell_and_the_baseline_render_at_load(tmp_path, monkeypatch):
    """Literal braces are text; and a template slipping past the field check (check bypassed
    here) is still refused at load, not when a test renders it."""
    from lac_core.protocol import grids

    grid = load_grid(_grid(tmp_path, template="{{As}} {persona}: {task} }}{{"))
    cell = next(c for c in grid.cells if c.id == "pirate__bread")
    assert grid.user_text(cell, "XY") == "{As} a pirate: Bake bread. }{"
    assert grid.user_text(cell, "BB") == "{As} someone: Do something. }{"
    monkeypatch.setattr(grids, "checked_template", lambda template, where: template)
    for template, why in (("As {persona:%s}, {task}", "does not render"),
                          ("As {persona:.3}, {task}", "does not keep the persona and task")):
        path = _grid(tmp_path, template=template)
        with pytest.raises(GridError, match=why) as err:
            load_grid(path)
        assert str(path) in str(err.value)


def _bomb(levels: int) -> str:
    """A flow list of nested aliases: level k holds nine aliases of level k-1 (9**levels * 9
    characters expanded, a few hundred bytes on disk)."""
    names = [f"l{i}" for i in range(levels + 1)]
    parts = [f"&{names[0]} [{', '.join(['xxxxxxxxx'] * 9)}]"]
    parts += [f"&{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    return f"[{', '.join(parts)}]"


BOMB_PLACES = {  # where a nested-alias value sits; each error message once quoted it whole
    "template": "template: {bomb}\n",
    "experiments": "experiments: {bomb}\n",  # and set() of its lists was a TypeError
    "markers": "markers: {bomb}\n",
}


@pytest.mark.parametrize("place", BOMB_PLACES)
def test_nested_aliases_are_refused_before_expanding(tmp_path, place):
    """6 levels: 4.8 million characters expanded (the old message held all 7 MB of it)."""
    path = tmp_path / "bomb.yaml"
    path.write_text("baseline: {persona: someone, task: Do it.}\npersonas: {a: A, b: B}\n"
                    "tasks: {t: T, u: U}\n" + BOMB_PLACES[place].format(bomb=_bomb(6)))
    assert path.stat().st_size < 700
    with pytest.raises(GridError) as err:
        load_grid(path)
    msg = str(err.value)
    assert str(path) in msg and "1 MiB" in msg and "aliases" in msg and len(msg) < 400


def test_alias_size_is_measured_without_expanding(tmp_path):
    """30 levels are 9**31 characters expanded: measured exactly, instantly, and refused."""
    from lac_core.protocol import grids

    data = yaml.safe_load(f"template: {_bomb(30)}")
    expected = sum(9 ** (k + 1) * 9 for k in range(31)) + len("template")
    assert grids.expanded_size(data, "x.yaml") == expected
    path = tmp_path / "deep.yaml"
    path.write_text(f"baseline: {{persona: p, task: t}}\npersonas: {{a: A, b: B}}\n"
                    f"tasks: {{t: T, u: U}}\ntemplate: {_bomb(30)}\n")
    with pytest.raises(GridError, match="aliases expand to") as err:
        load_grid(path)
    assert len(str(err.value)) < 400
    path.write_text("baseline: {persona: p, task: t}\npersonas: {a: A, b: B}\n"
                    "tasks: {t: T, u: U}\ntemplate: &loop [x, *loop]\n")
    with pytest.raises(GridError, match="refers to a node that contains it"):
        load_grid(path)


def test_a_grid_file_over_1_mib_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    text = (GRID_DIR / "example.yaml").read_text()
    path.write_text(text + "#" * (2 ** 20 - len(text.encode())) + "\n")
    with pytest.raises(GridError, match="more than a grid may hold") as err:
        load_grid(path)
    assert str(path) in str(err.value) and "1 MiB" in str(err.value)


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(template="As a " + "very " * 2000 + "long template"),
    lambda d: d.update(experiments=["sweep", "x" * 10000]),
    lambda d: d.update({"k" * 10000: 1}),
    lambda d: d["markers"].update({"chef" * 3000: ["knife"]}),
    lambda d: d.update(experiments=["markers"]) or d.update(
        personas={**d["personas"], **{f"p{i:04}": "someone" for i in range(2000)}}),
])
def test_error_messages_quote_values_cut_short(tmp_path, mutate):
    data = _example()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert str(path) in str(err.value) and len(str(err.value)) < 400, len(str(err.value))


@pytest.mark.parametrize("text, message", [
    ('template: "As {persona:.3}, {task}"\n', "'{persona:.3}'"),
    ("template: BOMB\n", "aliases expand to"),
])
def test_a_bad_template_or_alias_bomb_stops_the_session_at_start(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("baseline: {persona: someone, task: Do it.}\npersonas: {a: A, b: B}\n"
                   "tasks: {t: T, u: U}\n" + text.replace("BOMB", _bomb(6)))
    out = _pytest("--lac-model", "tiny-llama", "--lac-grid", str(bad), "--lac-reports", str(tmp_path / "r"))
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if "lac:" in line]
    assert len(lines) == 1 and str(bad) in lines[0] and message in lines[0] and len(lines[0]) < 500
    assert "passed" not in out.stdout and "error" not in out.stdout and not (tmp_path / "r").exists()


def test_a_key_yaml_reads_as_a_boolean_is_named(tmp_path):
    """Probe A6: `yes:` / `no:` are booleans in YAML 1.1; say so instead of 'must map 2 keys'."""
    grid = yaml.safe_load((GRID_DIR / "example.yaml").read_text())
    del grid["markers"]
    text = yaml.safe_dump(grid).replace("  pirate:", "  yes:").replace("  nurse:", "  no:")
    (tmp_path / "g.yaml").write_text(text)
    with pytest.raises(GridError, match="has the key (True|False), a bool, not text.*quote it"):
        load_grid(tmp_path / "g.yaml")


def test_a_folder_named_like_a_grid_file_is_named_as_such(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(GridError, match="dir.yaml is not a file"):
        resolve_grid(str(tmp_path / "dir.yaml"))


def test_a_users_grid_named_like_the_papers_is_compared_with_nothing(tmp_path):
    """Probe A3: the paper's numbers sit beside a run only on the paper's own grid (by content)."""
    from lac_core.protocol.grids import paper_grid

    short = resolve_grid("short")
    assert paper_grid("short", short.sha256) == "short"
    mine = tmp_path / "short.yaml"
    mine.write_text((GRID_DIR / "example.yaml").read_text())
    assert paper_grid("short", load_grid(mine).sha256) is None


def test_a_list_as_a_yaml_key_is_a_clear_error(tmp_path):
    """Probe A5: an unhashable key is a YAML error naming the file, not an INTERNALERROR."""
    (tmp_path / "g.yaml").write_text("? [1, 2]\n: 3\n")
    with pytest.raises(GridError, match="cannot read grid file .*g.yaml"):
        load_grid(tmp_path / "g.yaml")
