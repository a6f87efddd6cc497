"""Re-execute notebooks in place, so that their committed outputs are regenerated.

The website shows the outputs stored in the notebooks (the book is built without execution),
and nbval checks the cells marked ``# NBVAL_CHECK_OUTPUT`` against them. After changing a
chapter or the package, run::

    python scripts/execute_notebooks.py --cpu               # every chapters/*.ipynb
    python scripts/execute_notebooks.py --cpu chapters/11-2-how-llms-work.ipynb

Each notebook runs top to bottom in a fresh kernel started in its own folder. Widget state is
stored in the notebook metadata (so saved widgets render on the static site); per-cell timing
metadata is not recorded (it would churn every diff). ``--cpu`` sets ``JAX_PLATFORMS=cpu`` for
the kernel, which is how the committed outputs are made and how CI checks them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from coursekit import REPO_ROOT

DEFAULT_GLOB = "chapters/*.ipynb"

# Fixed environment for the kernel, so reruns give the same outputs.
DETERMINISTIC_ENV = {
    "PYTHONHASHSEED": "0",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
}


def execute_notebook(
    path: Path, *, timeout: int, kernel_name: str, allow_errors: bool = False
) -> float:
    """Execute one notebook in place; return the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel_name,
        allow_errors=allow_errors,
        store_widget_state=True,
        record_timing=False,
        # Keep the kernel's own log quiet (it warns about local TCP transport on every start).
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return elapsed


def _resolve(paths: list[str]) -> list[Path]:
    notebooks = [Path(p) for p in paths] if paths else sorted(REPO_ROOT.glob(DEFAULT_GLOB))
    if not notebooks:
        raise ValueError(f"no notebooks given and none match {DEFAULT_GLOB!r} in {REPO_ROOT}")
    for nb in notebooks:
        if nb.suffix != ".ipynb" or not nb.is_file():
            raise ValueError(f"notebook must be an existing .ipynb file, got {str(nb)!r}")
    return [nb.resolve() for nb in notebooks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Re-execute notebooks in place (default: chapters/*.ipynb)."
    )
    parser.add_argument("notebooks", nargs="*", help="paths to .ipynb files")
    parser.add_argument(
        "--timeout", type=int, default=600, help="seconds allowed per cell (default 600)"
    )
    parser.add_argument("--cpu", action="store_true", help="run JAX on the CPU (JAX_PLATFORMS=cpu)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    parser.add_argument(
        "--allow-errors", action="store_true", help="keep going past cells that raise"
    )
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    try:
        notebooks = _resolve(args.notebooks)
    except ValueError as err:
        parser.error(str(err))

    os.environ.update(DETERMINISTIC_ENV)  # the kernel inherits this process's environment
    if args.cpu:
        os.environ["JAX_PLATFORMS"] = "cpu"

    failed: list[Path] = []
    total = 0.0
    for nb in notebooks:
        rel = nb.relative_to(REPO_ROOT) if nb.is_relative_to(REPO_ROOT) else nb
        try:
            seconds = execute_notebook(
                nb, timeout=args.timeout, kernel_name=args.kernel, allow_errors=args.allow_errors
            )
        except CellExecutionError as err:
            failed.append(nb)
            print(f"FAILED  {rel}: {str(err).splitlines()[-1] if str(err) else err}", flush=True)
            continue
        total += seconds
        print(f"{seconds:7.1f} s  {rel}", flush=True)
    print(f"{total:7.1f} s  total, {len(notebooks) - len(failed)}/{len(notebooks)} executed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
