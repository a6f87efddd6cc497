"""jaxllm as a wheel: built from the repository's tracked files, installed in a fresh environment.

`python -m build` makes the sdist, and the wheel from the sdist, out of a copy of the files git
tracks (what a clean clone has: a resource that was never added to git is missing here too).
The wheel must hold every file the package loads at run time (everything under
``jaxllm/resources/``: corpus, capitals, shipped checkpoints and model cards as they appear),
and nothing of the course tooling or the tests. Installed in a fresh virtual environment
(no system site-packages; the dependencies at the versions of constraints.txt), the command line
trains and samples.

It needs the package index (or pip's cache) for the build backend and the dependencies; it
takes a minute or two.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import jaxllm

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.packaging]

# Runtime resources: every file below jaxllm/resources/ that git tracks.
RESOURCES = "jaxllm/resources/"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PIP_CONSTRAINT", "PIP_NO_INDEX", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), **kwargs)
    assert done.returncode == 0, f"{command[:6]}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def _tracked() -> list[str]:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout to know which files a clean clone has")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    assert out.returncode == 0, (
        f"git ls-files failed: {out.stderr.decode()[-500:]} (a checkout owned by another user: "
        "git config --global --add safe.directory <checkout>)")
    return [p for p in out.stdout.decode().split("\0") if p and (REPO / p).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """sdist and wheel of a copy of the tracked files."""
    base = tmp_path_factory.mktemp("wheel")
    clone = base / "clone"
    tracked = _tracked()
    for rel in tracked:
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, clone / rel)
    dist = base / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(clone)], timeout=600)
    [wheel] = dist.glob("jaxllm-*.whl")
    [sdist] = dist.glob("jaxllm-*.tar.gz")
    resources = sorted(p for p in tracked if p.startswith(RESOURCES))
    return {"base": base, "wheel": wheel, "sdist": sdist, "resources": resources}


def test_wheel_holds_the_package_and_its_resources_and_nothing_else(built):
    with zipfile.ZipFile(built["wheel"]) as zf:
        names = set(zf.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
    assert built["resources"], "no tracked files below jaxllm/resources/"
    missing = [p for p in built["resources"] if p not in names]
    assert not missing, f"the wheel lacks run-time resources: {missing}"
    for name in ("jaxllm/resources/shakespeare.txt", "jaxllm/resources/capitals.csv"):
        assert name in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"jaxllm", meta_name.split("/")[0]}, f"unexpected content: {tops}"
    # One version, from jaxllm/__init__.py; the licence travels with it.
    assert built["wheel"].name.startswith(f"jaxllm-{jaxllm.__version__}-py3-none-any")
    assert meta["Version"] == jaxllm.__version__
    assert meta["License-Expression"] == "MIT"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_sdist_holds_what_the_wheel_is_built_from(built):
    with tarfile.open(built["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", *built["resources"]):
        assert name in names, f"the sdist lacks {name}"
    assert not any(n.startswith(("coursekit/", "tests/", "chapters/")) for n in names)


def test_wheel_installs_in_a_fresh_environment_and_trains_and_samples(built):
    base = built["base"]
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    python, cli = venv / "bin" / "python", venv / "bin" / "jaxllm"
    _run([str(python), "-m", "pip", "install", "--quiet", "--constraint",
          str(REPO / "constraints.txt"), str(built["wheel"])], timeout=900)
    work = base / "work"  # not the checkout: nothing may import the repository's jaxllm
    work.mkdir()
    version = _run([str(cli), "--version"], cwd=work, timeout=120).stdout.strip()
    assert version == jaxllm.__version__
    run = work / "run"
    _run([str(cli), "train", "--preset", "tiny", "--out", str(run), "--steps", "20",
          "--no-progress"], cwd=work, timeout=600)
    assert (run / "run.json").is_file() and (run / "tokenizer.json").is_file()
    sample = _run([str(cli), "sample", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "40",
                   "--seed", "1"], cwd=work, timeout=600).stdout
    assert sample.startswith("ROMEO:") and len(sample.strip()) > len("ROMEO:"), sample
    where = _run([str(python), "-c", "import jaxllm; print(jaxllm.__file__)"], cwd=work,
                 timeout=120).stdout.strip()
    assert where.startswith(str(venv)), where
