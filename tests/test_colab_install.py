"""The Colab install cell, run for real where Colab's trap is: an older jax already installed.

A Colab GPU runtime comes with its own jax, jaxlib and CUDA plugin. Installing jaxllm with
nothing but lower bounds let pip upgrade jaxlib (a newer flax wants a newer jax) and leave the
plugin behind, so JAX silently fell back to the CPU. This test builds a fresh virtual
environment the way such a runtime is built (an older jax, jaxlib and flax preinstalled; the
CUDA plugin is left out, as this runs on a CPU: the observable is that jax and jaxlib stay),
then runs the chapters' install cell, its text exactly as stamped into the notebooks, with two
substitutions: Colab is faked (a ``google.colab`` module) and the GitHub URL is replaced by a
copy of this checkout. Afterwards jax and jaxlib must be the versions they were, and jaxllm
must import and run.

The control, with ``COLAB_INSTALL_CONTROL=1`` (off by default: it costs another resolution):
a dry run of the cell's pip command without the constraints (the cell before this fix) must
want to replace jax; otherwise this environment no longer shows the trap, and the preinstalled
versions below need to be older. (Measured when the test was written: that command upgrades
jax/jaxlib 0.7.2 to 0.10.2 and flax 0.11.2 to 0.12.8; the cell keeps jax/jaxlib 0.7.2 and
picks flax 0.12.0.)

It needs the package index (or a pip cache or ``PIP_FIND_LINKS`` wheelhouse that holds these
versions) and takes a minute or two: skip it with ``SKIP_COLAB_INSTALL_TEST=1`` or
``-m "not colab_install"``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from coursekit import notebook_template

REPO = Path(__file__).resolve().parents[1]

# A Colab GPU runtime of late 2025, less its CUDA plugin (jax-cuda12-plugin==0.7.2).
PREINSTALLED = {"jax": "0.7.2", "jaxlib": "0.7.2", "flax": "0.11.2"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.packaging,
    pytest.mark.colab_install,
    pytest.mark.skipif(os.environ.get("SKIP_COLAB_INSTALL_TEST") == "1",
                       reason="SKIP_COLAB_INSTALL_TEST=1"),
]

# Executes the cell's source (stdin) as Colab would: google.colab importable, with the
# google.colab.output module that jax imports when it sees google.colab.
AS_COLAB = textwrap.dedent(
    """
    import sys, types

    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    google.colab.output = types.ModuleType("google.colab.output")
    sys.modules.update({"google": google, "google.colab": google.colab,
                        "google.colab.output": google.colab.output})
    exec(compile(sys.stdin.read(), "<install cell>", "exec"), {"__name__": "__main__"})
    """
)

VERSIONS = (
    "import json; from importlib import metadata; "
    "print(json.dumps({d.metadata['Name'].lower(): d.version for d in metadata.distributions()}))"
)


def _env() -> dict[str, str]:
    """This environment, less what would leak the test's own packages or pins into the venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PIP_CONSTRAINT", "PIP_NO_INDEX", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def package_copy(dest: Path) -> Path:
    """The files pip builds jaxllm from, copied (pip must not write into the checkout)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        if (REPO / name).is_file():
            shutil.copyfile(REPO / name, dest / name)
    shutil.copytree(REPO / "jaxllm", dest / "jaxllm", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), **kwargs)
    assert done.returncode == 0, f"{command[:5]}...\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def _versions(python: Path) -> dict[str, str]:
    return json.loads(_run([str(python), "-c", VERSIONS], timeout=60).stdout)


def test_install_cell_keeps_an_older_preinstalled_jax(tmp_path: Path):
    start = time.monotonic()
    venv = tmp_path / "colab"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet",
          *[f"{name}=={version}" for name, version in PREINSTALLED.items()]], timeout=600)
    before = _versions(python)
    preinstalled_s = time.monotonic() - start
    assert {name: before.get(name) for name in PREINSTALLED} == PREINSTALLED

    cell = notebook_template.install_cell_source()
    github = notebook_template.pip_requirement(*notebook_template.repository())
    extras = ",".join(notebook_template.COLAB_EXTRAS)
    local = f"jaxllm[{extras}] @ {package_copy(tmp_path / 'pkg').as_uri()}"
    assert cell.count(f'"{github}"') == 1
    cell = cell.replace(f'"{github}"', f'"{local}"')

    planned: dict[str, str] = {}
    if os.environ.get("COLAB_INSTALL_CONTROL") == "1":
        # Control: the cell's command without the constraints (the old cell) replaces jax.
        report = tmp_path / "report.json"
        _run([str(python), "-m", "pip", "install", "--quiet", "--dry-run", "--report",
              str(report), "--upgrade-strategy", "only-if-needed", local], timeout=600)
        planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                   for item in json.loads(report.read_text(encoding="utf-8"))["install"]}
        assert planned.get("jax", PREINSTALLED["jax"]) != PREINSTALLED["jax"], (
            f"without constraints pip no longer replaces jax {PREINSTALLED['jax']} "
            f"({planned}): the trap is gone from this setup; preinstall older versions")

    start = time.monotonic()
    done = _run([str(python), "-c", AS_COLAB], input=cell, timeout=900, cwd=tmp_path)
    cell_s = time.monotonic() - start
    assert "JAX backend: cpu | devices: [CpuDevice(id=0)]" in done.stdout, done.stdout

    after = _versions(python)
    assert (after["jax"], after["jaxlib"]) == (PREINSTALLED["jax"], PREINSTALLED["jaxlib"]), (
        f"the install replaced Colab's jax/jaxlib: {after['jax']}/{after['jaxlib']}")
    # flax had to move (jaxllm needs flax>=0.12.0): pip chose one that works with jax 0.7.2.
    flax = tuple(int(p) for p in after["flax"].split(".")[:2])
    assert flax >= (0, 12), after["flax"]
    assert "jaxllm" in after

    # jaxllm, installed in the venv, imports with the old jax, and its command line runs.
    probe = "import jax, jaxllm; print(jax.__version__, jaxllm.__file__)"
    out = _run([str(python), "-c", probe], timeout=300, cwd=tmp_path).stdout.split()
    assert out[0] == PREINSTALLED["jax"] and out[-1].startswith(str(venv)), out
    version = _run([str(venv / "bin" / "jaxllm"), "--version"], timeout=120, cwd=tmp_path)
    assert version.stdout.strip()
    old = {name: planned.get(name) for name in PREINSTALLED} if planned else "(not run)"
    print(f"kept jax {after['jax']}, jaxlib {after['jaxlib']}; flax {before['flax']} -> "
          f"{after['flax']}; without constraints pip would install {old}; venv and "
          f"preinstall {preinstalled_s:.0f} s, the cell {cell_s:.0f} s")
