"""Generate every lab from its source with ``otter assign``.

For each lab source ``labs/src/<lab>.ipynb`` (solutions, public and hidden tests, in otter's
notebook format) this runs ``otter assign`` and writes:

- ``labs/<lab>.ipynb``: the student notebook (committed; the website and the Colab button show
  it). It has no solutions and no hidden tests; its public tests are in its own metadata.
- ``labs/dist/<lab>/student/``: the same notebook and its public tests as otter test files
  (``tests/qN.py``), for instructors who hand them out separately.
- ``labs/dist/<lab>/autograder/``: otter's solution notebook and, as
  ``labs/dist/<lab>/<lab>-autograder.zip``, the autograder archive with all tests, hidden
  ones included, which ``scripts/grade_labs.py`` (or Gradescope) grades with.

``labs/dist/`` is git-ignored: it holds the hidden tests.

Usage::

    python scripts/assign_labs.py                 # every lab in labs/src
    python scripts/assign_labs.py LAB [LAB ...]   # some labs, by name
    python scripts/assign_labs.py --check         # exit 1 if a committed student notebook is stale
    python scripts/assign_labs.py --run-tests     # also grade otter's solution notebook

The generated student notebook is made byte-for-byte reproducible: otter gives the cells it
creates (``grader.check`` cells) random ids, which are replaced here by ids derived from the cell's
content, and cells carried over from the source keep the source's ids.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from coursekit import REPO_ROOT, lab_template

LABS_DIR = REPO_ROOT / "labs"
SOURCES_DIR = LABS_DIR / "src"
DIST_DIR = LABS_DIR / "dist"


@dataclass(frozen=True)
class LabOutputs:
    """Where ``assign_lab`` put one lab's files."""

    lab: str
    student_notebook: Path  # the generated student notebook (in dist)
    public_tests: Path  # folder of public otter test files
    solution_notebook: Path  # otter's autograder notebook: solutions, no tests, check cells
    autograder_zip: Path  # all tests, for grading


def lab_sources(names: list[str] | None = None, sources_dir: Path = SOURCES_DIR) -> list[Path]:
    """The lab sources to generate: all of ``labs/src/*.ipynb``, or the named ones."""
    available = {p.stem: p for p in sorted(Path(sources_dir).glob("*.ipynb"))}
    if not names:
        if not available:
            raise ValueError(f"no lab sources (*.ipynb) in {sources_dir}")
        return list(available.values())
    chosen = []
    for name in names:
        lab_template.check_lab_name(name)
        if name not in available:
            raise ValueError(
                f"lab {name!r} has no source {Path(sources_dir) / (name + '.ipynb')}; "
                f"labs: {sorted(available)}"
            )
        chosen.append(available[name])
    return chosen


def _content_id(cell: nbformat.NotebookNode, taken: set[str]) -> str:
    digest = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()
    base = f"otter-{digest[:10]}"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def make_reproducible(nb: nbformat.NotebookNode, source: nbformat.NotebookNode) -> None:
    """Make ``nb`` depend on nothing but the source's text, in place.

    Every cell gets a deterministic id (see the module docstring), and the kernel's language
    details that executing the source records (the Python version) are dropped: the student's
    own kernel fills them in.
    """
    language = nb.metadata.get("language_info", {}).get("name", "python")
    nb.metadata["language_info"] = {"name": language}
    source_ids = {c.get("id") for c in source.cells if c.get("id")}
    taken: set[str] = set()
    for cell in nb.cells:
        cell_id = cell.get("id")
        if cell_id not in source_ids or cell_id in taken:
            cell_id = _content_id(cell, taken | source_ids)
        cell["id"] = cell_id
        taken.add(cell_id)


def write_public_tests(student_notebook: Path, tests_dir: Path) -> list[Path]:
    """Write the public tests stored in a student notebook's metadata as otter test files.

    This is what the lab's setup cell does in the student's session; it is done here too so
    that instructors can see (and hand out) exactly the tests students get.
    """
    nb = nbformat.read(student_notebook, as_version=4)
    tests = nb.metadata.get("otter", {}).get("tests", {})
    tests_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, test in sorted(tests.items()):
        if not name.isidentifier():
            raise ValueError(f"{student_notebook}: question name {name!r} is not an identifier")
        text = test if isinstance(test, str) else f"OK_FORMAT = True\n\ntest = {test!r}\n"
        path = tests_dir / f"{name}.py"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def assign_lab(
    source: Path, dist_dir: Path = DIST_DIR, *, run_tests: bool = False, quiet: bool = True
) -> LabOutputs:
    """Run ``otter assign`` on one lab source; write its outputs to ``dist_dir/<lab>/``.

    The committed student notebook ``labs/<lab>.ipynb`` is not touched here (see ``main``).
    """
    from otter.assign import main as otter_assign

    source = Path(source).resolve()
    lab = lab_template.lab_of(source)
    problems = lab_template.check_notebook(source)
    if problems:
        raise ValueError(
            "; ".join(problems) + " (fix it with: python scripts/lab_template.py stamp)"
        )
    out = Path(dist_dir).resolve() / lab
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = io.StringIO()
    redirect = contextlib.redirect_stdout(log) if quiet else contextlib.nullcontext()
    try:
        with redirect:
            otter_assign(str(source), str(out), no_pdfs=True, no_run_tests=not run_tests)
    except Exception as error:
        raise RuntimeError(
            f"otter assign failed for {source}: {error}\n{log.getvalue()}"
        ) from error

    student = out / "student" / source.name
    nb = nbformat.read(student, as_version=4)
    make_reproducible(nb, nbformat.read(source, as_version=4))
    nbformat.validate(nb)
    nbformat.write(nb, student)
    public_tests = write_public_tests(student, out / "student" / "tests")
    if not public_tests:
        raise RuntimeError(f"{source}: otter assign stored no public tests in the student notebook")

    zips = sorted((out / "autograder").glob(f"{lab}-autograder_*.zip"))
    if len(zips) != 1:
        raise RuntimeError(f"expected one autograder zip in {out / 'autograder'}, found {zips}")
    autograder_zip = out / f"{lab}-autograder.zip"
    shutil.copyfile(zips[0], autograder_zip)
    return LabOutputs(
        lab=lab,
        student_notebook=student,
        public_tests=out / "student" / "tests",
        solution_notebook=out / "autograder" / source.name,
        autograder_zip=autograder_zip,
    )


def stale_student_notebooks(sources: list[Path], labs_dir: Path = LABS_DIR) -> list[str]:
    """Labs whose committed student notebook differs from a fresh ``otter assign`` run."""
    stale = []
    with tempfile.TemporaryDirectory(prefix="assign-labs-check-") as tmp:
        for source in sources:
            outputs = assign_lab(source, Path(tmp))
            committed = Path(labs_dir) / f"{outputs.lab}.ipynb"
            if not committed.is_file():
                stale.append(f"{committed} is missing")
            elif committed.read_bytes() != outputs.student_notebook.read_bytes():
                stale.append(f"{committed} differs from what {source} generates")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labs", nargs="*", help="lab names (default: every labs/src/*.ipynb)")
    parser.add_argument("--dist", type=Path, default=DIST_DIR, help="output folder (git-ignored)")
    parser.add_argument(
        "--run-tests", action="store_true",
        help="also let otter grade its solution notebook with all tests (runs a kernel)",
    )
    parser.add_argument(
        "--check", action="store_true",
        help="write nothing; exit 1 if a committed student notebook is not what its source makes",
    )
    args = parser.parse_args(argv)
    try:
        sources = lab_sources(args.labs)
    except ValueError as error:
        parser.error(str(error))
    if args.check:
        stale = stale_student_notebooks(sources)
        print("\n".join(stale) if stale else f"{len(sources)} student notebook(s) up to date")
        return 1 if stale else 0
    for source in sources:
        outputs = assign_lab(source, args.dist, run_tests=args.run_tests)
        committed = LABS_DIR / f"{outputs.lab}.ipynb"
        shutil.copyfile(outputs.student_notebook, committed)
        print(f"{outputs.lab}:")
        print(f"  student notebook  {committed.relative_to(REPO_ROOT)}")
        tests = sorted(p.name for p in outputs.public_tests.glob("*.py"))
        print(f"  public tests      {outputs.public_tests} ({', '.join(tests)})")
        print(f"  autograder        {outputs.autograder_zip}")
        if args.run_tests:
            print("  otter graded the solution notebook: all tests pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
