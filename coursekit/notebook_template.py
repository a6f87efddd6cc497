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

(``scripts/notebook_template.py`` is this module's command line; so is
``python -m coursekit.notebook_template`` from the repository root.)

Without notebook arguments, ``check`` and ``stamp`` act on ``chapters/*.ipynb``. Stamping
clears the outputs of nothing but the cells it writes; re-execute with
``scripts/execute_notebooks.py`` afterwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml

from coursekit import REPO_ROOT

CONFIG_PATH = REPO_ROOT / "_config.yml"
CHAPTERS_DIR = REPO_ROOT / "chapters"

# Extras of the package that the chapters need (see [project.optional-dependencies]).
COLAB_EXTRAS: tuple[str, ...] = ("viz", "tokenizers")

INSTALL_CELL_FIRST_LINE = (
    "# Colab only: install this course's package `jaxllm` from GitHub; nothing happens elsewhere."
)
SETUP_CELL_FIRST_LINE = "# Setup: imports, random seeds, and problem sizes that fit the hardware."

INSTALL_CELL_TAGS = ["hide-input"]


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


def install_cell_source(config_path: Path = CONFIG_PATH) -> str:
    """The exact source of the first cell of every chapter notebook."""
    url, branch = repository(config_path)
    requirement = pip_requirement(url, branch)
    return f'''{INSTALL_CELL_FIRST_LINE}
# pip's default "only-if-needed" strategy plus jaxllm's lower-bound-only requirements keep
# Colab's own accelerator-enabled jax, jaxlib and flax: never add -U/--upgrade here.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet",
            "--upgrade-strategy", "only-if-needed",
            "{requirement}",
        ],
        check=True,
    )
    import jax

    print("JAX backend:", jax.default_backend(), "| devices:", jax.devices())'''


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


def put_cell(cell: nbformat.NotebookNode, source: str, tags: tuple[str, ...] | list[str]) -> bool:
    """Give a template cell its source (clearing stale outputs) and tags; True if it changed.

    Shared by this module and ``coursekit.lab_template``: both stamp a generated first cell.
    """
    changed = False
    if cell.source != source:
        cell.source, cell.outputs, cell.execution_count = source, [], None
        changed = True
    have = cell.metadata.setdefault("tags", [])
    for tag in tags:
        if tag not in have:
            have.append(tag)
            changed = True
    return changed


def stamp_notebook(path: Path, config_path: Path = CONFIG_PATH) -> bool:
    """Write the template cells into a notebook; return True if the file changed."""
    nb = nbformat.read(path, as_version=4)
    index = first_code_cell_index(nb)
    if index is None or not _is_install_cell(nb.cells[index]):
        # Insert right after the title (a leading markdown cell), before everything else.
        index = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
        nb.cells.insert(index, nbformat.v4.new_code_cell(""))
    changed = put_cell(nb.cells[index], install_cell_source(config_path), INSTALL_CELL_TAGS)
    following = [c for c in nb.cells[index + 1 :] if c.cell_type == "code"]
    if not following or not _is_setup_cell(following[0]):
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(setup_cell_source()))
        changed = True
    if changed:
        nbformat.validate(nb)
        nbformat.write(nb, path)
    return changed


def _notebooks(paths: list[str]) -> list[Path]:
    if paths:
        found = [Path(p) for p in paths]
    else:
        found = sorted(CHAPTERS_DIR.glob("*.ipynb"))
    for p in found:
        if p.suffix != ".ipynb" or not p.is_file():
            raise ValueError(f"notebook path must be an existing .ipynb file, got {str(p)!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["show", "check", "stamp"])
    parser.add_argument("notebooks", nargs="*", help="default: chapters/*.ipynb")
    args = parser.parse_args(argv)
    if args.command == "show":
        print(install_cell_source())
        return 0
    notebooks = _notebooks(args.notebooks)
    if args.command == "check":
        problems = [p for nb in notebooks for p in check_notebook(nb)]
        print("\n".join(problems) if problems else f"{len(notebooks)} notebook(s) match")
        return 1 if problems else 0
    for nb in notebooks:
        print(f"{'stamped' if stamp_notebook(nb) else 'unchanged'}: {nb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
