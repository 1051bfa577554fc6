"""Run the `run:` steps of one job of docs/ci/lac-workflow.yml or docs/ci/lac-merge.yml here,
as GitHub Actions would, so the recipes users copy cannot rot: the job's env with each `${{ }}` expression given a value on the command
line (an expression left without one is an error; `secrets.X` is empty unless given, as for an
unset secret), `uses:` steps skipped, a step after a failure run only when it says `if: always()`,
and what a step appends to $GITHUB_ENV set for the steps after it. Prints each step's exit code;
exits with the job's."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def fill(text: str, values: dict[str, str], where: str) -> str:
    def one(match: re.Match) -> str:
        if match.group(1).startswith("secrets.") and match.group(1) not in values:
            return ""  # GitHub gives an unset secret as the empty string
        if match.group(1) not in values:
            sys.exit(f"workflow: {where} uses ${{{{ {match.group(1)} }}}}, which has no value; "
                     f"pass --set '{match.group(1)}=...'")
        return values[match.group(1)]
    return EXPR.sub(one, str(text))


def read_github_env(path: Path) -> dict[str, str]:
    """The NAME=VALUE lines steps appended to $GITHUB_ENV (one-line values: all the recipe uses)."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("workflow", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="EXPR=VALUE")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set a variable; one the job's env names is then taken as given")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--job", help="the job to run (default: the workflow's only job with steps)")
    args = ap.parse_args()
    values = dict(item.split("=", 1) for item in args.set)
    jobs = {name: job for name, job in yaml.safe_load(args.workflow.read_text())["jobs"].items()
            if "steps" in job}  # a job that `uses:` another workflow runs that one's steps
    if args.job is None and len(jobs) != 1:
        sys.exit(f"workflow: {args.workflow} has jobs {', '.join(jobs)}; pass --job NAME")
    job_name = args.job or next(iter(jobs))
    if job_name not in jobs:
        sys.exit(f"workflow: no job {job_name!r} with steps in {args.workflow}: {', '.join(jobs)}")
    job = jobs[job_name]
    overrides = dict(item.split("=", 1) for item in args.env)
    env = {**os.environ, **overrides}
    for name, value in job.get("env", {}).items():
        if name not in overrides:
            env[name] = fill(value, values, f"env {name}")
    outputs = tempfile.NamedTemporaryFile(delete=False, dir=args.workdir, suffix=".output")
    github_env = Path(tempfile.NamedTemporaryFile(delete=False, dir=args.workdir, suffix=".env").name)
    env.setdefault("GITHUB_STEP_SUMMARY", str(args.workdir / "step-summary.md"))
    env["GITHUB_OUTPUT"] = outputs.name
    env["GITHUB_ENV"] = str(github_env)
    failed = False
    for i, step in enumerate(job["steps"]):
        name = step.get("name") or step.get("uses")
        if "run" not in step:
            print(f"workflow: step {i} {name}: `uses:` skipped here", flush=True)
            continue
        if failed and "always()" not in str(step.get("if", "")):
            print(f"workflow: step {i} {name}: skipped after a failure", flush=True)
            continue
        script = fill(step["run"], values, f"step {name!r}")
        print(f"workflow: step {i} {name}: started", flush=True)
        rc = subprocess.run(["bash", "-e", "-c", script], cwd=args.workdir, env=env).returncode
        print(f"workflow: step {i} {name}: exit {rc}", flush=True)
        failed = failed or rc != 0
        env.update(read_github_env(github_env))
    print(f"workflow: job {job_name}: {'failed' if failed else 'passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
