"""The users' CI recipe (docs/ci/lac-workflow.yml), read as GitHub Actions reads it: what it
caches, which secrets and pins it uses, how it names and publishes its files, and its first run
on a model without expectations. .ci/run runs its steps end to end; these check each property
on its own, fast."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "docs" / "ci" / "lac-workflow.yml"
CONSTRAINTS = ROOT / "docs" / "ci" / "constraints.txt"
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
ARTIFACT_FORBIDDEN = set('"/:<>|*?\\\r\n')  # actions/upload-artifact@v4 refuses these in names


@pytest.fixture(scope="module")
def job() -> dict:
    (job,) = yaml.safe_load(WORKFLOW.read_text())["jobs"].values()
    return job


def uses(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith(action)]


def running(job: dict, text: str) -> dict:
    """The one run: step whose script holds `text`."""
    (step,) = [s for s in job["steps"] if text in s.get("run", "")]
    return step


def evaluate(text: str, contexts: dict[str, str]) -> str:
    """`${{ }}` expressions of plain context lookups replaced; any other one is left as is."""
    return EXPR.sub(lambda m: contexts.get(m.group(1), m.group(0)), text)


def env_of(job: dict, workspace: str = "/ws", model: str = "m") -> dict[str, str]:
    contexts = {"github.workspace": workspace, "matrix.model": model}
    return {k: evaluate(str(v), contexts) for k, v in job["env"].items()}


def commands(script: str) -> list[str]:
    """A script's commands, continuation lines joined."""
    return script.replace("\\\n", " ").splitlines()


def test_hub_downloads_go_to_the_cached_folder(job):
    env = env_of(job)
    cached = [evaluate(str(s["with"]["path"]), {f"env.{k}": v for k, v in env.items()})
              for s in uses(job, "actions/cache")]
    assert cached, "no actions/cache step"
    assert "HF_HOME" in env, "HF_HOME unset: hub downloads go to ~/.cache, which is not cached"
    assert all(Path(env["HF_HOME"]).is_relative_to(Path(p)) for p in cached), (env, cached)


def test_cache_is_saved_when_the_claims_fail(job):
    """actions/cache saves only after a green job; a red gate must not discard the downloads."""
    saves = [s for s in job["steps"] if str(s.get("uses", "")).startswith(
        ("actions/cache/save", "actions/cache@"))]
    assert saves and all("always()" in str(s.get("if", "")) for s in saves), saves


def test_hf_token_comes_from_the_secrets(job):
    assert re.fullmatch(r"\$\{\{\s*secrets\.HF_TOKEN\s*\}\}", str(job["env"].get("HF_TOKEN")))


def test_runner_image_is_pinned(job):
    assert re.fullmatch(r"ubuntu-\d+\.\d+", job["runs-on"]), job["runs-on"]


def test_every_pip_install_uses_the_constraints_file(job):
    installs = [c for s in job["steps"] for c in commands(s.get("run", "")) if "pip install" in c]
    assert installs
    for command in installs:
        assert re.search(r'(-c|--constraint)[ =]"?\$LAC_CONSTRAINTS', command), command
    assert job["env"]["LAC_CONSTRAINTS"]
    assert "constraints.txt" in (ROOT / "docs" / "ci.md").read_text()


def test_constraints_pin_every_dependency_and_torch():
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines()
                if line and not line.startswith("#"))
    names = {re.sub(r"[-_.]+", "-", n).lower() for n in pins}
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.findall(r'^\s*"([A-Za-z0-9_.-]+)[<>=!~ ]', text.split("dependencies = [", 1)[1]
                      .split("]", 1)[0], re.M)
    assert deps
    assert {re.sub(r"[-_.]+", "-", d).lower() for d in deps} <= names
    assert pins["torch"] == "2.13.0"
    assert "pytest-lac" not in names  # the package itself comes from LAC_PACKAGE


def artifact_name(job: dict, model: str, tmp_path: Path) -> str:
    """The upload's name for `model`: the steps that set $GITHUB_ENV run, then the expression."""
    github_env = tmp_path / "github_env"
    github_env.write_text("")
    env = {**os.environ, **env_of(job, str(tmp_path), model), "GITHUB_ENV": str(github_env)}
    for step in job["steps"]:
        if "GITHUB_ENV" in step.get("run", ""):
            subprocess.run(["bash", "-e", "-c", step["run"]], env=env, check=True, cwd=tmp_path)
    env.update(line.split("=", 1) for line in github_env.read_text().splitlines())
    (upload,) = uses(job, "actions/upload-artifact")
    contexts = {**{f"env.{k}": v for k, v in env.items()}, "matrix.model": model}
    return evaluate(str(upload["with"]["name"]), contexts)


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "Owner/Some-Model@v1.2"])
def test_artifact_is_named_by_model(job, model, tmp_path):
    name = artifact_name(job, model, tmp_path)
    assert "${{" not in name, f"the artifact name {name!r} is not set from the model"
    assert not set(name) & ARTIFACT_FORBIDDEN, name
    assert all(part in name for part in re.split(r"[/@]", model)), (model, name)
    assert name != artifact_name(job, "other-model", tmp_path)


def test_summary_step_runs_and_passes_after_a_failure(job, tmp_path):
    """After a step that failed before lac wrote its report, the summary still says so."""
    (step,) = [s for s in job["steps"] if "GITHUB_STEP_SUMMARY" in s.get("run", "")]
    assert "always()" in str(step.get("if", ""))
    summary = tmp_path / "summary.md"
    env = {**os.environ, **env_of(job, str(tmp_path)), "GITHUB_STEP_SUMMARY": str(summary)}
    done = subprocess.run(["bash", "-e", "-c", step["run"]], env=env, cwd=tmp_path)
    assert done.returncode == 0
    assert "no SUMMARY.md" in summary.read_text()


def test_threads_are_set(job):
    step = running(job, "-m pytest")
    assert "--lac-threads" in step["run"]
    assert re.search(r"export [^\n]*OMP_NUM_THREADS=", step["run"])


FAKE_PYTEST = """#!/bin/bash
# python -m pytest: log the arguments and, when recording, write the expectations file as lac
# does; anything else: the real interpreter
if [ "$1" = -m ]; then
  echo "$@" >> "$FAKE_LOG"
  case " $* " in *" --lac-update-baselines "*) mkdir -p "$LAC_EXPECTED_DIR"
    echo "verdicts: {}" > "$LAC_EXPECTED_DIR/tiny-llama.yaml";; esac
  exit "$FAKE_RC"
fi
exec {python} "$@"
"""


def run_claims_step(job: dict, tmp_path: Path, rc: int) -> tuple[subprocess.CompletedProcess, str]:
    """The claims step on tiny-llama, its pytest replaced by a stub that exits `rc`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTEST.replace("{python}", sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "pytest.log"
    log.write_text("")
    env = {**os.environ, **env_of(job, str(tmp_path), "tiny-llama"), "LAC_UPDATE": "",
           "LAC_ARTIFACT": "lac-tiny-llama", "FAKE_LOG": str(log), "FAKE_RC": str(rc),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    step = running(job, "-m pytest")
    done = subprocess.run(["bash", "-e", "-c", step["run"]], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    return done, log.read_text()


def test_first_run_of_a_model_records_its_expectations_and_asks_for_review(job, tmp_path):
    """No expectations file: the run records them instead of stopping at exit 4, and the job
    fails saying so, so the gate is on only once a reviewer commits the file."""
    done, log = run_claims_step(job, tmp_path, rc=1)
    assert "--lac-update-baselines" in log
    assert (tmp_path / "lac-expected" / "tiny-llama.yaml").exists()
    assert done.returncode == 1, "a run that recorded expectations must not be green"
    assert "::error" in done.stdout and "lac-expected/tiny-llama.yaml" in done.stdout
    note = (tmp_path / "lac-bootstrap.md").read_text()
    assert "commit" in note and "lac-tiny-llama" in note


def test_a_model_with_expectations_is_gated_not_recorded(job, tmp_path):
    (tmp_path / "lac-expected").mkdir()
    (tmp_path / "lac-expected" / "tiny-llama.yaml").write_text("verdicts: {}\n")
    (tmp_path / "lac-bootstrap.md").write_text("an earlier run's note, in the same folder")
    done, log = run_claims_step(job, tmp_path, rc=0)
    assert log and "--lac-update-baselines" not in log
    assert done.returncode == 0 and not (tmp_path / "lac-bootstrap.md").exists()
    failed, _ = run_claims_step(job, tmp_path, rc=1)
    assert failed.returncode == 1


MERGE = ROOT / "docs" / "ci" / "lac-merge.yml"


@pytest.fixture(scope="module")
def merged() -> dict:
    return yaml.safe_load(MERGE.read_text())


def test_the_merge_recipe_calls_the_claims_workflow_as_copied_and_merges_after_it(merged):
    """Its first job is lac.yml itself (where ci.md says to copy lac-workflow.yml), which takes
    the call; the merge job waits for it, runs when a model's job was red, and reads the
    artifacts where the claims job names them (lac-<model>/lac-report)."""
    jobs = merged["jobs"]
    assert jobs["claims"]["uses"] == "./.github/workflows/lac.yml"
    assert ".github/workflows/lac.yml" in (ROOT / "docs" / "ci.md").read_text()
    called = yaml.safe_load(WORKFLOW.read_text())[True]["workflow_call"]  # YAML 1.1: on is True
    assert set(called["inputs"]) == set(yaml.safe_load(WORKFLOW.read_text())[True]
                                        ["workflow_dispatch"]["inputs"])
    merge = jobs["merge"]
    assert merge["needs"] == "claims" and "always()" in str(merge.get("if", ""))
    (download,) = uses(merge, "actions/download-artifact")
    (claims,) = yaml.safe_load(WORKFLOW.read_text())["jobs"].values()
    (upload,) = uses(claims, "actions/upload-artifact")
    assert download["with"]["pattern"] == "lac-*" and "LAC_ARTIFACT" in upload["with"]["name"]
    step = running(merge, "lac_core.merge")
    paths = re.search(r"lac_core\.merge (\S+)", commands(step["run"])[0]).group(1)
    assert paths == f"{download['with']['path']}/lac-*/lac-report"
    assert "lac-report/" in upload["with"]["path"]


def test_the_merge_job_installs_lac_as_the_claims_job_does(merged, job):
    """One install recipe: the same lines (and the constraints file) in both jobs, so the lac
    that merges is the lac that ran."""
    merge = merged["jobs"]["merge"]
    assert running(merge, "pip install")["run"] == running(job, "pip install")["run"]
    for name in ("LAC_PACKAGE", "LAC_CONSTRAINTS", "LAC_EXPECTED_DIR"):
        assert merge["env"][name] == job["env"][name], name


def test_the_merge_summary_step_says_when_there_is_no_merged_set(merged, tmp_path):
    merge = merged["jobs"]["merge"]
    (step,) = [s for s in merge["steps"] if "GITHUB_STEP_SUMMARY" in s.get("run", "")]
    assert "always()" in str(step.get("if", ""))
    summary = tmp_path / "summary.md"
    done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path,
                          env={**os.environ, "GITHUB_STEP_SUMMARY": str(summary)})
    assert done.returncode == 0 and "no merged SUMMARY.md" in summary.read_text()
