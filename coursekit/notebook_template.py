"""The first two cells of every chapter notebook, in one place.

Cell 1 installs this repository's package when the notebook runs in Google Colab and does
nothing anywhere else. Its text is built here from the repository URL and branch in
``_config.yml`` (the only place that names the repository); ``tests/test_notebook_template.py``
checks that every chapter notebook starts with exactly this text.

Cell 2 imports, seeds and picks problem sizes by backend. Chapters adapt it to their needs, so
only a default is kept here (used when a new notebook is stamped).

Usage::

    python scripts/notebook_template.py show                 # print cell 1
    python scripts/notebook_template.py check [NOTEBOOK ...]  # exit 1 if a notebook differs
    python scripts/notebook_template.py stamp [NOTEBOOK ...]  # write cell 1 (and cell 2 if absent)
    python scripts/notebook_template.py stamp --keep-outputs  # same behaviour outside Colab

(``scripts/notebook_template.py`` is this module's command line; so is
``python -m coursekit.notebook_template`` from the repository root.)

Without notebook arguments, ``check`` and ``stamp`` act on ``chapters/*.ipynb``. Stamping
clears the outputs of nothing but the cells it writes (``--keep-outputs``: not even those);
re-execute with ``scripts/execute_notebooks.py`` afterwards when the cell's behaviour changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml

from coursekit import REPO_ROOT

CONFIG_PATH = REPO_ROOT / "_config.yml"
PYPROJECT_PATH = REPO_ROOT / "pyproject.toml"
CHAPTERS_DIR = REPO_ROOT / "chapters"

# Extras of the package that the chapters need (see [project.optional-dependencies]).
COLAB_EXTRAS: tuple[str, ...] = ("viz", "tokenizers", "serve")

INSTALL_CELL_FIRST_LINE = (
    "# Colab only: install this course's package `jaxllm` from GitHub; nothing happens elsewhere."
)
SETUP_CELL_FIRST_LINE = "# Setup: imports, random seeds, and problem sizes that fit the hardware."

INSTALL_CELL_TAGS = ["hide-input"]

# The jax family: jax, jaxlib and the accelerator plugins are built for one another, so they must
# move together. Colab's GPU runtime has jax, jaxlib, jax-cuda12-plugin and jax-cuda12-pjrt; its
# TPU runtime has libtpu. A newer jaxlib beside an older plugin makes JAX skip the plugin with a
# mere warning ("... is not compatible with the installed jaxlib version ..., so it will not be
# used"): the notebook then runs on the CPU. The install cells hand every installed member of the
# family to pip as a constraint (name==version), so nothing they install can replace one.
JAX_FAMILY_PATTERN = r"jax|jaxlib|libtpu(?:-nightly)?|jax-(?:cuda|rocm)\d+-(?:plugin|pjrt)"
# The name of the install function that the chapter and the lab cells define and call.
INSTALL_FUNCTION = "_install_keeping_jax"


def repository(config_path: Path = CONFIG_PATH) -> tuple[str, str]:
    """Return ``(url, branch)`` of the GitHub repository named in ``_config.yml``."""
    config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    repo = config.get("repository")
    if not isinstance(repo, dict):
        raise ValueError(f"{config_path}: `repository` must be a mapping with url and branch")
    url, branch = repo.get("url"), repo.get("branch")
    if not isinstance(url, str) or not url.startswith("https://github.com/"):
        raise ValueError(
            f"{config_path}: repository.url must be 'https://github.com/<org>/<repo>', "
            f"got {url!r}"
        )
    parts = url.removeprefix("https://github.com/").strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(
            f"{config_path}: repository.url must name exactly <org>/<repo>, got {url!r}"
        )
    if not isinstance(branch, str) or not branch:
        raise ValueError(f"{config_path}: repository.branch must be a branch name, got {branch!r}")
    return url.rstrip("/"), branch


def pip_requirement(url: str, branch: str, extras: tuple[str, ...] = COLAB_EXTRAS) -> str:
    """The PEP 508 requirement that installs this repository's package from GitHub."""
    extra = f"[{','.join(extras)}]" if extras else ""
    return f"jaxllm{extra} @ git+{url}@{branch}"


def jax_lower_bound(pyproject_path: Path = PYPROJECT_PATH) -> str:
    """The lowest jax version ``jaxllm`` supports: its ``jax>=X`` requirement in pyproject.toml."""
    import re
    import tomllib

    project = tomllib.loads(Path(pyproject_path).read_text(encoding="utf-8"))["project"]
    bounds = [m.group(1) for req in project.get("dependencies", [])
              for m in [re.fullmatch(r"jax\s*>=\s*([\w.]+)", req.strip())] if m]
    if len(bounds) != 1:
        raise ValueError(
            f"{pyproject_path}: [project] dependencies must have exactly one 'jax>=X' "
            f"requirement (the install cell names it), got {bounds!r}"
        )
    return bounds[0]


def install_function_source(pyproject_path: Path = PYPROJECT_PATH) -> str:
    """Source of the install function that the chapter and the lab cells define and call.

    ``{INSTALL_FUNCTION}(*requirements)`` pip-installs the requirements with every installed
    member of the jax family (``JAX_FAMILY_PATTERN``) pinned as a constraint. When pip finds no
    versions of jaxllm's requirements that fit the pinned jax (the runtime's jax is older than
    jaxllm supports), it stops with one message that names the upgrade that keeps the
    accelerator (``jax[cuda12]``, ``jax[tpu]``: jaxlib and its plugin together). After the
    install it prints JAX's backend and devices.
    """
    minimum = jax_lower_bound(pyproject_path)
    return f'''def {INSTALL_FUNCTION}(*requirements):
    """pip-install `requirements`, keeping the installed jax, jaxlib and accelerator plugin."""
    import re
    import subprocess
    import tempfile
    from importlib import metadata

    family = {{}}  # the first copy of each on sys.path: the one that imports
    members = r"{JAX_FAMILY_PATTERN}"
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if re.fullmatch(members, name):
            family.setdefault(name, dist.version)
    with tempfile.NamedTemporaryFile("w", suffix="-jax.txt", delete=False) as constraints:
        constraints.write("".join(f"{{n}}=={{v}}\\n" for n, v in sorted(family.items())))
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--upgrade-strategy",
        "only-if-needed", "--constraint", constraints.name, *requirements,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 and "ResolutionImpossible" in done.stderr:
        installed = ", ".join(f"{{n}} {{v}}" for n, v in sorted(family.items())) or "no jax"
        plugins = sorted(n for n in family if n not in ("jax", "jaxlib"))
        cuda = [n.split("-")[1] for n in plugins if re.fullmatch(r"jax-cuda\\d+-plugin", n)]
        tpu = any(n.startswith("libtpu") for n in plugins)
        upgrade = (f'"jax[{{cuda[0]}}]"' if cuda else '"jax[tpu]"' if tpu
                   else " ".join(["jax", "jaxlib", *plugins]))
        raise RuntimeError(
            "jaxllm needs jax>={minimum}, and pip found no versions of its requirements that "
            f"work with this runtime's {{installed}}. Installing anyway would replace jaxlib "
            "without its accelerator plugin, and JAX would silently run on the CPU. Upgrade "
            f"jax together with its plugin instead (in a cell: !pip install -U {{upgrade}}), "
            "then restart the session (Runtime > Restart session) and run this cell again."
            f"\\n\\npip said:\\n{{done.stderr.strip()}}"
        )
    if done.returncode != 0:
        raise RuntimeError(f"pip install failed (exit {{done.returncode}}):\\n{{done.stderr}}")
    import jax

    print("JAX backend:", jax.default_backend(), "| devices:", jax.devices())'''


def install_cell_source(config_path: Path = CONFIG_PATH) -> str:
    """The exact source of the first cell of every chapter notebook."""
    url, branch = repository(config_path)
    requirement = pip_requirement(url, branch)
    return f'''{INSTALL_CELL_FIRST_LINE}
# Colab's own jax, jaxlib and accelerator plugin are given to pip as constraints, so nothing
# installed here can replace them (a newer jaxlib without its plugin silently loses the GPU).
import sys

REQUIREMENT = "{requirement}"


{install_function_source()}


if "google.colab" in sys.modules:
    {INSTALL_FUNCTION}(REQUIREMENT)'''


def setup_cell_source() -> str:
    """The default second cell: imports, seeds, sizes by backend."""
    return f'''{SETUP_CELL_FIRST_LINE}
import jax
import jax.numpy as jnp
import numpy as np

import jaxllm

SEED = 0
key = jax.random.key(SEED)  # split this key for every random draw
rng = np.random.default_rng(SEED)  # for NumPy-side randomness
BACKEND = jax.default_backend()  # "cpu", "gpu" or "tpu"
# Small on a CPU (minutes on a laptop), larger on a GPU or TPU.
SIZE = "small" if BACKEND == "cpu" else "large"
print(f"JAX {{jax.__version__}}, {{jax.device_count()}} {{BACKEND}} device(s), size {{SIZE}}")'''


def _is_install_cell(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "code" and cell.source.startswith(INSTALL_CELL_FIRST_LINE)


def _is_setup_cell(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "code" and "jax.default_backend()" in cell.source


def first_code_cell_index(nb: nbformat.NotebookNode) -> int | None:
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)


def check_notebook(path: Path, config_path: Path = CONFIG_PATH) -> list[str]:
    """Problems with the template cells of one notebook (empty list: all good)."""
    nb = nbformat.read(path, as_version=4)
    index = first_code_cell_index(nb)
    if index is None:
        return [f"{path}: has no code cell"]
    problems = []
    if nb.cells[index].source != install_cell_source(config_path):
        problems.append(f"{path}: first code cell is not the Colab install cell of the template")
    rest = [c for c in nb.cells[index + 1 :] if c.cell_type == "code"]
    if not rest or not _is_setup_cell(rest[0]):
        problems.append(
            f"{path}: second code cell must be the setup cell (imports, seeds, "
            "jax.default_backend() to pick sizes)"
        )
    return problems


def put_cell(cell: nbformat.NotebookNode, source: str, tags: tuple[str, ...] | list[str],
             *, keep_outputs: bool = False) -> bool:
    """Give a template cell its source (clearing stale outputs) and tags; True if it changed.

    ``keep_outputs`` keeps the cell's outputs and execution count: for a new text that behaves
    as the old one where the notebooks are executed (outside Colab), so the committed outputs
    stay true without re-executing every notebook.

    Shared by this module and ``coursekit.lab_template``: both stamp a generated first cell.
    """
    changed = False
    if cell.source != source:
        cell.source = source
        if not keep_outputs:
            cell.outputs, cell.execution_count = [], None
        changed = True
    have = cell.metadata.setdefault("tags", [])
    for tag in tags:
        if tag not in have:
            have.append(tag)
            changed = True
    return changed


def stamp_notebook(path: Path, config_path: Path = CONFIG_PATH, *,
                   keep_outputs: bool = False) -> bool:
    """Write the template cells into a notebook; return True if the file changed.

    ``keep_outputs``: see ``put_cell``."""
    nb = nbformat.read(path, as_version=4)
    index = first_code_cell_index(nb)
    if index is None or not _is_install_cell(nb.cells[index]):
        # Insert right after the title (a leading markdown cell), before everything else.
        index = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
        nb.cells.insert(index, nbformat.v4.new_code_cell(""))
    changed = put_cell(nb.cells[index], install_cell_source(config_path), INSTALL_CELL_TAGS,
                       keep_outputs=keep_outputs)
    following = [c for c in nb.cells[index + 1 :] if c.cell_type == "code"]
    if not following or not _is_setup_cell(following[0]):
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(setup_cell_source()))
        changed = True
    if changed:
        nbformat.validate(nb)
        nbformat.write(nb, path)
    return changed


def notebook_paths(paths: list[str], default: list[Path] | None = None) -> list[Path]:
    """The notebooks named on a command line (default: ``default``, else every chapter),
    each checked to be an existing ``.ipynb`` file."""
    if paths:
        found = [Path(p) for p in paths]
    else:
        found = sorted(CHAPTERS_DIR.glob("*.ipynb")) if default is None else default
    for p in found:
        if p.suffix != ".ipynb" or not p.is_file():
            raise ValueError(f"notebook path must be an existing .ipynb file, got {str(p)!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["show", "check", "stamp"])
    parser.add_argument("notebooks", nargs="*", help="default: chapters/*.ipynb")
    parser.add_argument(
        "--keep-outputs", action="store_true",
        help="stamp: keep the install cell's outputs and execution count (use when the new "
             "text behaves as the old one outside Colab, so no notebook needs re-executing)")
    args = parser.parse_args(argv)
    if args.command == "show":
        print(install_cell_source())
        return 0
    notebooks = notebook_paths(args.notebooks)
    if args.command == "check":
        problems = [p for nb in notebooks for p in check_notebook(nb)]
        print("\n".join(problems) if problems else f"{len(notebooks)} notebook(s) match")
        return 1 if problems else 0
    for nb in notebooks:
        changed = stamp_notebook(nb, keep_outputs=args.keep_outputs)
        print(f"{'stamped' if changed else 'unchanged'}: {nb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
