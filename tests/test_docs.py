"""The documentation against the repository: links that resolve inside it, a README short enough
to read that keeps the three commands CI runs, a results.json schema that names every field a
real run writes, and no option a page or a message names that pytest does not know."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
CI_BLOCKS = {"main": "python3 -m venv", "tests": "python3 -m venv",
             "installed": "python3 -m venv VENV"}


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code: what a reader sees as links."""
    return re.sub(r"`[^`\n]*`", "", _code_free(text))


def _links(text: str) -> list[str]:
    """Targets of inline links and images, and of reference definitions."""
    prose = _prose(text)
    inline = re.findall(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    refs = re.findall(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s.*)?$", prose, flags=re.M)
    return inline + refs


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats
    numbered."""
    seen, out = {}, set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _code_free(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _code_free(text: str) -> str:
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.M | re.S)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


REPO_PATH = re.compile(r"(\.\./|(?:docs|fixtures|tests|claims|lac_core|benchmarks|\.ci)/)[\w./-]*")


def _named_paths(text: str) -> list[str]:
    """Repository paths a page names in inline code, from the repository's root
    (`fixtures/claims.yaml`, `tests/x.py::test`), leaving out patterns (`expected/<model>.yaml`,
    `grids/*.yaml`) and code blocks."""
    spans = re.findall(r"`([^`\n]+)`", _code_free(text))
    return [s.split("::")[0] for s in spans if REPO_PATH.fullmatch(s.split("::")[0])]


def test_every_link_and_named_path_resolves_inside_the_repository():
    """Each relative link of README.md and docs/*.md, and each repository path they name in
    inline code, is a file or folder inside the repository (a path out of it, such as the
    paper's folder beside this checkout, works on no user's machine); an anchor after '#' names
    a heading of the page it points to."""
    bad = []
    for page in PAGES:
        text = page.read_text()
        named = [(ROOT, t) for t in _named_paths(text)]  # written from the repository's root
        for base, target in [(page.parent, t) for t in _links(text)] + named:
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (base / file).resolve() if file else page
            if not dest.is_relative_to(ROOT):
                bad.append(f"{_rel(page)}: {target} points outside the repository")
            elif not dest.exists():
                bad.append(f"{_rel(page)}: {target} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{_rel(page)}: {target}: no heading '#{anchor}' in {_rel(dest)}")
        bad += [f"{_rel(page)}:{i}: names ../shared, which is not in the repository"
                for i, line in enumerate(text.splitlines(), 1) if "../shared" in line]
    assert not bad, "\n".join(bad)


def test_every_docs_page_is_linked_from_the_readme():
    """A page no link reaches is a page no user finds."""
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _links(README.read_text())}
    unlinked = [_rel(p) for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def _ci_block(text: str, name: str) -> list[str]:
    """The shell lines of a ci block as .ci/run reads them: the lines from <!-- ci:NAME --> to
    <!-- /ci:NAME -->, without comment and fence lines."""
    m = re.search(rf"^<!-- ci:{name} -->\n(.*?)^<!-- /ci:{name} -->", text, re.M | re.S)
    if not m:
        return []
    return [line for line in m.group(1).splitlines()
            if line.strip() and not line.startswith(("<!--", "```"))]


def test_the_readme_is_short_and_keeps_the_commands_ci_runs():
    """At most 100 lines; the three blocks .ci/run extracts are there, one command each, in their
    roles: main sets up a checkout and runs the claims, tests runs the self-tests, installed sets
    up a fresh VENV from a WHEEL and runs the shipped claims from no checkout."""
    text = README.read_text()
    n = len(text.splitlines())
    assert n <= 100, f"README.md has {n} lines; the most is 100 (details go to docs/)"
    used = set(re.findall(r"readme_block (\w+)", (ROOT / ".ci" / "run").read_text()))
    assert used <= set(CI_BLOCKS), f".ci/run reads blocks this test does not know: {sorted(used)}"
    blocks = {name: _ci_block(text, name) for name in CI_BLOCKS}
    for name, start in CI_BLOCKS.items():
        assert len(blocks[name]) == 1, f"ci:{name} must hold one command line: {blocks[name]}"
        command = blocks[name][0]
        assert command.startswith(start + " "), f"ci:{name} must start with {start!r}: {command}"
        assert "pip install torch==2.13.0" in command, f"ci:{name} installs torch first"
    main, tests, installed = (blocks[n][0] for n in CI_BLOCKS)
    assert 'pip install -e ".[dev]"' in main and main.endswith("python -m pytest claims/")
    assert 'pip install -e ".[dev]"' in tests and "python -m pytest tests/" in tests
    assert "pip install WHEEL" in installed and "--pyargs lac_core.claims" in installed


# Mappings whose keys are data, not field names: model names, module names, grid labels, file
# names, "model / grid / kind" labels, cell ids, probes, layers, doses, marker conditions and
# host interventions, and the names a claim's rule gives its numbers. '[]' is a list's items,
# '*' a data key.
DATA_KEYED = {
    "models", "models.*.device_map",
    "run.grids", "run.grids_sha256", "run.load_seconds", "run.seconds", "run.failed",
    "run.from_resume_cache", "run.thresholds_sha256",
    "run.grids.*.personas", "run.grids.*.tasks", "run.grids.*.markers", "claims", "claims.*.units",
    "thresholds.sections", "thresholds.sections.*", "thresholds.why", "thresholds.why.*",
    "thresholds.titles",
    *(f"verdicts[].{part}.{kind}" for part in ("deciding", "parts[]", "preconditions[]")
      for kind in ("numbers", "intervals")),
    "sweeps[].references", "sweeps[].faithfulness", "sweeps[].faithfulness.*",
    *(f"sweeps[].summary.{k}{s}" for k in ("kl_add", "kl_null", "geometry") for s in ("", ".*")),
    *(f"markers[].{k}{s}" for k in ("texts", "tokens", "hits") for s in ("", ".*")),
    "markers[].summary.any", "markers[].summary.distinct_mean",
    "host_injection[].kl", "host_injection[].kl.*", "host_injection[].target_tokens",
    "host_injection[].summary.median_kl", "host_injection[].summary.median_gap_closed",
    "dose_and_swap[].dose", "dose_and_swap[].dose.*",
    "fingerprint.grids_sha256", "fingerprint.thresholds_sha256", "expectation_keys.grids",
    "expectation_keys.claims", "expectation_keys.models", "expectation_keys.models.*.claims",
}


def _schema_keys(x, path: str = "", out: dict | None = None) -> dict:
    """Every field name of a results.json, with the first path it was seen at."""
    out = {} if out is None else out
    if isinstance(x, dict):
        data = path in DATA_KEYED
        for k, v in x.items():
            if not data:
                out.setdefault(k, f"{path}.{k}".lstrip("."))
            _schema_keys(v, f"{path}.*" if data else f"{path}.{k}".lstrip("."), out)
    elif isinstance(x, list):
        for v in x:
            _schema_keys(v, f"{path}[]", out)
    return out


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The report folder of a real claims run: tiny-llama on the example grid (every
    experiment), with no expectations (an empty folder) and no resume cache. Its verdicts need
    not hold: the files are what is read."""
    tmp = tmp_path_factory.mktemp("docs")
    (tmp / "expected").mkdir()
    cmd = [sys.executable, "-m", "pytest", "claims/", "-p", "no:cacheprovider", "--lac-no-cache",
           "--lac-model", "tiny-llama", "--lac-grid", "example", "--lac-reports",
           str(tmp / "reports"), "--lac-expected-dir", str(tmp / "expected"), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    path = tmp / "reports" / "results.json"
    assert path.is_file(), \
        f"no results.json (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return tmp / "reports"


@pytest.fixture(scope="module")
def results_json(real_run):
    return json.loads((real_run / "results.json").read_text())


def test_a_real_runs_report_set_is_rebuilt_from_its_results_json_alone(real_run, tmp_path):
    """`python -m lac_core.report` in a fresh process writes the set the run wrote: Markdown,
    results.json and SVGs byte for byte, PNGs pixel for pixel (tests/test_rebuild.py)."""
    from .test_rebuild import assert_same_set, rebuild

    out = rebuild(real_run / "results.json", tmp_path / "again")
    assert out.returncode == 0, out.stderr[-3000:]
    names = {str(f) for f in assert_same_set(real_run, tmp_path / "again")}
    assert {"REPORT.md", "SUMMARY.md", "results.json"} <= names


def test_every_field_of_a_real_results_json_is_in_the_schema(results_json):
    """Every dict key of the run's results.json, at any depth, appears as a word in
    docs/SCHEMA.md. Keys that are data, not schema, are skipped by one rule: the keys of the
    mappings listed in DATA_KEYED (keyed by model, grid, file, cell, probe, layer, dose,
    condition, intervention, or by the names a rule gives its numbers); the walk goes on into
    their values, whose own field names are checked."""
    schema = (ROOT / "docs" / "SCHEMA.md").read_text()
    keys = _schema_keys(results_json)
    assert {"run", "sweeps", "markers", "host_injection", "dose_and_swap"} <= set(keys)
    missing = [f"{k} (at {where})" for k, where in sorted(keys.items())
               if not re.search(rf"(?<![\w]){re.escape(k)}(?![\w])", schema)]
    assert not missing, "fields of results.json that docs/SCHEMA.md does not name:\n" + \
        "\n".join(missing)


@pytest.fixture(scope="module")
def lac_options():
    """The --lac-* options pytest knows, from `pytest --help` in the repository."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    options = set(re.findall(r"^\s+(--lac-[a-z0-9-]+)", out.stdout, re.M))
    assert "--lac-model" in options, out.stdout[-2000:]
    return options


OPTION = re.compile(r"--lac-[a-z0-9]+(?:-[a-z0-9]+)*")


def _message_options() -> dict[str, str]:
    """The --lac-* options lac_core's string literals (its messages and help texts) name: option
    -> the first module naming it."""
    found = {}
    for path in sorted((ROOT / "lac_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for option in OPTION.findall(node.value):
                    found.setdefault(option, _rel(path))
    return found


def test_every_option_a_doc_or_message_names_exists_and_every_option_is_documented(lac_options):
    """A `--lac-...` word in README.md, docs/*.md or a string of lac_core (an error message
    telling the user what to pass) is an option of `pytest --help`; and docs/options.md names
    every one of them."""
    named = {f"{_rel(p)}: {o}" for p in PAGES for o in OPTION.findall(p.read_text())} | \
        {f"{where}: {o}" for o, where in _message_options().items()}
    unknown = sorted(n for n in named if n.rpartition(": ")[2] not in lac_options)
    assert not unknown, "options named that pytest does not know:\n" + "\n".join(unknown)
    page = ROOT / "docs" / "options.md"
    documented = set(OPTION.findall(page.read_text())) if page.is_file() else set()
    assert lac_options <= documented, f"options docs/options.md does not describe: " \
        f"{sorted(lac_options - documented)}"


# The distribution lac is installed as (pyproject.toml's [project] name). `lac` on PyPI is another
# project (a lexical analysis tool), so a command that installs `lac` by that name installs it.
def _distribution() -> str:
    """[project] name in pyproject.toml (read without tomllib, which Python 3.10 lacks)."""
    project = (ROOT / "pyproject.toml").read_text().split("\n[project]\n", 1)[1]
    return re.search(r'^name\s*=\s*"([^"]+)"', project.split("\n[", 1)[0], re.M).group(1)


def _normal(name: str) -> str:
    """A distribution name as pip compares it (PEP 503): lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


WORKFLOW = ROOT / "docs" / "ci" / "lac-workflow.yml"
PIP_INSTALL = re.compile(r"pip install ([^`\n&|;]*)")
OPTION_WITH_VALUE = {"--index-url", "--extra-index-url", "-i", "-c", "-r", "--constraint",
                     "--requirement", "-f", "--find-links", "-d", "--target", "-t"}


def _requirements(args: str) -> list[str]:
    """The requirement names a `pip install ARGS` names (options, paths, variables, URLs and the
    README's WHEEL and ".[dev]" placeholders left out)."""
    import shlex
    words, out, skip = shlex.split(args.strip()), [], False
    for word in words:
        if skip or word.startswith("-"):
            skip = word in OPTION_WITH_VALUE
            continue
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", word)
        if name and not re.search(r"[/$]|\.whl$|^WHEEL$", word):
            out.append(name.group(0))
    return out


def test_every_install_command_names_the_projects_own_distribution():
    """A distribution name that is ours: the pytest plugin convention, `pytest-<name>`, and not
    the `lac` PyPI serves; every `pip install` in README.md, docs/ and the CI workflow that
    installs lac names it, the workflow's LAC_PACKAGE default is it, and the wheels .ci/run and
    the tests pick are named after it."""
    import yaml
    dist = _distribution()
    assert dist.startswith("pytest-") and _normal(dist) != "lac", \
        f"pyproject.toml names the distribution {dist!r}: `lac` on PyPI is another project"
    bad, ours = [], 0
    for page in [*PAGES, WORKFLOW]:
        for args in PIP_INSTALL.findall(page.read_text()):
            for req in _requirements(args):
                if _normal(req) == _normal(dist):
                    ours += 1
                elif "lac" in _normal(req).split("-"):
                    bad.append(f"{_rel(page)}: pip install {args.strip()}")
    assert not bad, f"install commands that name a distribution other than {dist}:\n" + \
        "\n".join(bad)
    assert ours, f"no page tells a user to `pip install {dist}`"
    env = yaml.safe_load(WORKFLOW.read_text())["jobs"]["claims"]["env"]
    assert _normal(env["LAC_PACKAGE"]) == _normal(dist), env["LAC_PACKAGE"]
    wheel = dist.replace("-", "_")  # a wheel's file name writes the name with '_'
    for path in (ROOT / ".ci" / "run", ROOT / "tests" / "conftest.py"):  # installed_wheel
        globs = re.findall(r"([\w.-]+)-\*\.whl", path.read_text())
        assert globs and set(globs) == {wheel}, f"{_rel(path)} picks wheels {globs}, not {wheel}"


def test_the_installed_version_is_looked_up_under_the_distribution_name():
    """The provenance's lac version, and the workflow's cache key, read the installed version of
    the project's own distribution (a lookup under another name finds nothing, or another
    project)."""
    from importlib import metadata

    from lac_core.run import provenance
    dist = _distribution()
    got = provenance.fingerprint(ROOT / "fixtures" / "claims.yaml", {})["lac"]
    assert got == metadata.version(dist), f"provenance reads {got!r}"
    lookups = re.findall(r"""version\(\s*["']([\w.-]+)["']\s*\)""", WORKFLOW.read_text())
    assert lookups and all(_normal(x) == _normal(dist) for x in lookups), lookups
