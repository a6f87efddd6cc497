"""The template cells of the chapter notebooks (coursekit.notebook_template).

The first cell must install this repository in Colab without replacing Colab's own
accelerator-enabled jax/jaxlib (it pins them as pip constraints), say clearly what to do when
no compatible set exists, and do nothing anywhere else. tests/test_colab_install.py runs the
same cell for real in a fresh environment with an older jax.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import nbformat
import pytest

from coursekit import notebook_template

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "chapters").glob("*.ipynb"))


T = notebook_template
SOURCE = T.install_cell_source()
URL, BRANCH = T.repository()

# Runs a cell's source in a fresh interpreter with an audit hook that records every attempt to
# start a process. With --colab, a `google.colab` module is registered first (as in Colab) and
# the hook refuses the first process start after recording it, so nothing is installed.
RUNNER = textwrap.dedent(
    """
    import json, sys, types

    colab = sys.argv[1] == "--colab"
    source = sys.stdin.read()
    launched = []

    class Refused(Exception):
        pass

    def hook(event, args):
        if event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn"):
            launched.append([event, [str(a) for a in args[1]] if event == "subprocess.Popen"
                             else [str(a) for a in args]])
            if colab:
                raise Refused(event)

    if colab:
        google = types.ModuleType("google")
        google.colab = types.ModuleType("google.colab")
        sys.modules["google"], sys.modules["google.colab"] = google, google.colab
    sys.addaudithook(hook)
    try:
        exec(compile(source, "<install cell>", "exec"), {"__name__": "__main__"})
        outcome = "completed"
    except Refused:
        outcome = "refused"
    sys.stderr.write("\\nRESULT " + json.dumps({"outcome": outcome, "launched": launched}))
    """
)


def _run_cell(source: str, *, colab: bool) -> tuple[str, dict]:
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "--colab" if colab else "--local"],
        input=source,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
    )
    before, _, result = proc.stderr.rpartition("\nRESULT ")
    return proc.stdout, {**json.loads(result), "stderr": before}


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_starts_with_the_template_cells(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first_code = nb.cells.index(code[0])
    assert all(c.cell_type == "markdown" for c in nb.cells[:first_code])
    assert code[0].source == SOURCE, (
        f"{path.name}: first code cell differs from the template; run "
        "`python scripts/notebook_template.py stamp` and re-execute the notebook"
    )
    assert code[0].outputs == [], "outside Colab the install cell prints nothing"
    setup = code[1].source
    assert "jax.default_backend()" in setup
    assert "jax.random.key(" in setup or "jax.random.PRNGKey(" in setup
    assert T.check_notebook(path) == []


def test_install_cell_names_the_repository_of_config():
    assert f'"jaxllm[viz,tokenizers,serve] @ git+{URL}@{BRANCH}"' in SOURCE
    assert SOURCE.count("https://github.com/") == 1
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert set(T.COLAB_EXTRAS) <= set(extras)


def test_install_cell_does_nothing_outside_colab():
    stdout, result = _run_cell(SOURCE, colab=False)
    assert stdout == ""
    assert result["stderr"] == ""
    assert result == {"outcome": "completed", "launched": [], "stderr": ""}


def _installed_jax_family() -> dict[str, str]:
    from importlib import metadata

    family: dict[str, str] = {}
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if re.fullmatch(T.JAX_FAMILY_PATTERN, name):
            family.setdefault(name, dist.version)
    return family


def test_install_cell_in_colab_pins_the_installed_jax_family():
    stdout, result = _run_cell(SOURCE, colab=True)
    assert result["outcome"] == "refused", "the cell must start pip in Colab"
    [(event, argv)] = result["launched"]
    assert event == "subprocess.Popen"
    assert argv[:4] == [sys.executable, "-m", "pip", "install"]
    for flag in ("-U", "--upgrade", "--force-reinstall", "-I", "--ignore-installed"):
        assert flag not in argv, f"{flag} could replace Colab's jax/jaxlib"
    assert argv[argv.index("--upgrade-strategy") + 1] == "only-if-needed"
    assert argv[-1] == f"jaxllm[viz,tokenizers,serve] @ git+{URL}@{BRANCH}"
    assert stdout == "", "nothing is printed before pip has run"
    # The constraints pin exactly the jax family that is installed (here: this environment's).
    constraints = Path(argv[argv.index("--constraint") + 1])
    pins = constraints.read_text(encoding="utf-8").splitlines()
    constraints.unlink()
    family = _installed_jax_family()
    assert {"jax", "jaxlib"} <= set(family)
    assert pins == [f"{name}=={version}" for name, version in sorted(family.items())]


def test_the_chapter_and_lab_cells_share_the_install_function():
    from coursekit import lab_template

    function = T.install_function_source()
    assert function in SOURCE
    assert function in lab_template.lab_cell_source("tokens-and-sampling")
    assert f"jax>={T.jax_lower_bound()}" in function
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"]["dependencies"]
    assert f"jax>={T.jax_lower_bound()}" in requirements


# Runs the cell "in Colab" with pip and the installed distributions faked: pip answers with
# FAKE_STDERR and exit code 1; the installed jax family is FAKE_FAMILY.
FAKE_PIP = textwrap.dedent(
    """
    import json, os, subprocess, sys, types
    from importlib import metadata

    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    sys.modules["google"], sys.modules["google.colab"] = google, google.colab

    class Dist:
        def __init__(self, name, version):
            self.metadata, self.version = {"Name": name}, version

    family = json.loads(os.environ["FAKE_FAMILY"])
    metadata.distributions = lambda: iter([Dist(n, v) for n, v in family.items()])
    subprocess.run = lambda command, **kw: subprocess.CompletedProcess(
        command, 1, "", os.environ["FAKE_STDERR"])
    try:
        exec(compile(sys.stdin.read(), "<install cell>", "exec"), {"__name__": "__main__"})
    except RuntimeError as error:
        print("RuntimeError:", error)
    """
)

RESOLUTION_IMPOSSIBLE = (
    "ERROR: Cannot install jaxllm because these package versions have conflicting "
    "dependencies.\n\nThe conflict is caused by:\n    jaxllm 0.1.0 depends on jax>=0.7.1\n"
    "    The user requested (constraint) jax==0.4.33\n\n"
    "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/"
    "dependency-resolution/#dealing-with-dependency-conflicts\n"
)


@pytest.mark.parametrize(
    ("family", "upgrade"),
    [
        ({"jax": "0.4.33", "jaxlib": "0.4.33", "jax-cuda12-plugin": "0.4.33",
          "jax-cuda12-pjrt": "0.4.33"}, '!pip install -U "jax[cuda12]"'),
        ({"jax": "0.4.33", "jaxlib": "0.4.33", "libtpu": "0.0.2"}, '!pip install -U "jax[tpu]"'),
        ({"jax": "0.4.33", "jaxlib": "0.4.33"}, "!pip install -U jax jaxlib)"),
    ],
    ids=["gpu", "tpu", "cpu"],
)
def test_too_old_jax_is_one_clear_message_with_the_upgrade_that_keeps_the_accelerator(
        family, upgrade):
    proc = subprocess.run(
        [sys.executable, "-c", FAKE_PIP], input=SOURCE, capture_output=True, text=True,
        timeout=120, check=True, cwd=REPO,
        env={**os.environ, "FAKE_FAMILY": json.dumps(family),
             "FAKE_STDERR": RESOLUTION_IMPOSSIBLE},
    )
    message = proc.stdout
    assert message.startswith(f"RuntimeError: jaxllm needs jax>={T.jax_lower_bound()}")
    assert upgrade in message
    for name, version in family.items():  # what this runtime has
        assert f"{name} {version}" in message
    assert "silently run on the CPU" in message and "restart the session" in message
    assert "ResolutionImpossible" in message  # pip's own explanation follows
    assert "JAX backend" not in message


def test_other_pip_failures_are_reported_as_they_are():
    proc = subprocess.run(
        [sys.executable, "-c", FAKE_PIP], input=SOURCE, capture_output=True, text=True,
        timeout=120, check=True, cwd=REPO,
        env={**os.environ, "FAKE_FAMILY": json.dumps({"jax": "0.7.2", "jaxlib": "0.7.2"}),
             "FAKE_STDERR": "ERROR: Could not find a version that satisfies git+https://..."},
    )
    assert proc.stdout.startswith("RuntimeError: pip install failed (exit 1)")
    assert "Could not find a version" in proc.stdout and "jax[" not in proc.stdout


def test_pip_would_install_only_jaxllm_over_the_preinstalled_jax(tmp_path: Path):
    """The same pip command, resolved for real (offline) against the installed environment.

    The environment plays Colab's part: its jax, jaxlib and flax stand for Colab's preinstalled
    ones. With the cell's options, pip must keep every one of them and install only jaxllm
    itself (from this checkout instead of GitHub, and with --no-index so nothing is fetched).
    """
    _, result = _run_cell(SOURCE, colab=True)
    [(_, argv)] = result["launched"]
    report = tmp_path / "report.json"
    local = argv[:-1] + [
        f"jaxllm[{','.join(T.COLAB_EXTRAS)}] @ {REPO.as_uri()}",
        "--dry-run",
        "--no-index",
        "--no-build-isolation",
        "--report",
        str(report),
    ]
    proc = subprocess.run(local, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    names = sorted(item["metadata"]["name"].lower() for item in installs)
    assert names == ["jaxllm"], f"pip would also install or replace: {names}"


def test_template_follows_the_config(tmp_path: Path):
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://github.com/some-org/fork\n  branch: dev\n")
    source = T.install_cell_source(config)
    assert '"jaxllm[viz,tokenizers,serve] @ git+https://github.com/some-org/fork@dev"' in source
    assert source.replace("some-org/fork@dev", "X") == SOURCE.replace(
        URL.removeprefix("https://github.com/") + f"@{BRANCH}", "X"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("title: x\n", "repository"),
        ("repository:\n  url: https://gitlab.com/a/b\n  branch: main\n", "repository.url"),
        ("repository:\n  url: https://github.com/only-org\n  branch: main\n", "repository.url"),
        ("repository:\n  url: https://github.com/a/b\n  branch: ''\n", "repository.branch"),
    ],
)
def test_bad_repository_config_is_a_clear_error(tmp_path: Path, text: str, message: str):
    config = tmp_path / "_config.yml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        T.install_cell_source(config)


def test_stamp_inserts_and_updates_the_template(tmp_path: Path):
    path = tmp_path / "new.ipynb"
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# A title"), nbformat.v4.new_code_cell("x = 1")]
    )
    nbformat.write(nb, path)
    assert T.check_notebook(path) != []
    assert T.stamp_notebook(path) is True
    assert T.check_notebook(path) == []
    cells = nbformat.read(path, as_version=4).cells
    assert [c.cell_type for c in cells] == ["markdown", "code", "code", "code"]
    assert cells[1].source == SOURCE and cells[3].source == "x = 1"
    assert T.stamp_notebook(path) is False, "stamping twice changes nothing"

    # An outdated install cell (e.g. after the repository moved) is replaced in place.
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = nb.cells[1].source.replace(URL, "https://github.com/old/place")
    nbformat.write(nb, path)
    assert T.check_notebook(path) != []
    assert T.stamp_notebook(path) is True
    cells = nbformat.read(path, as_version=4).cells
    assert len(cells) == 4 and cells[1].source == SOURCE
