"""Grade a folder of submitted lab notebooks with the hidden tests, without Docker.

Usage::

    python scripts/grade_labs.py SUBMISSIONS_DIR --out grades.csv [--lab LAB]

(``scripts/grade_labs.py`` is this module's command line.)

``SUBMISSIONS_DIR`` holds one notebook per student: either ``<student>.ipynb`` files, or one
folder per student (``<student>/<anything>.ipynb``). The grades go to a CSV file with one row
per student, one column per question, the total, and a ``reason`` column that says why points
were lost (which tests failed, or what stopped the notebook); the CSV is printed too. When a
question's tests found that a graded function is not the student's own code (it is, wraps or
calls the package's implementation: ``jaxllm.labcheck``), the reason says so and names it.

Each notebook is graded by otter-grader (the same code as ``otter run``) in its own process,
in a fresh temporary folder with a fresh copy of the autograder archive, so nothing one
submission does reaches the grading of the next. The parent process enforces, per notebook:

- a wall-time limit (``--timeout``): a notebook that runs longer (an endless loop) is stopped,
  with every process it started, and gets zero;
- a memory limit on the whole process tree (``--max-memory-mb``);
- an output limit (``--max-output-mb``): output past it is discarded, the grading goes on;
- a file-size limit (``--max-file-mb``, POSIX): no file it writes can grow past it.

A notebook that crashes its kernel (``os._exit``, a segfault) or deletes grading files gets
zero with a reason. Test files that change during the run (content, or inode change time after
the kernel started) void the questions they belong to. This makes grading robust against
accidents and casual tampering; it is not a sandbox: code in a submission runs with your
user's rights (see instructors.md).

The autograder archive is ``labs/dist/<lab>/<lab>-autograder.zip``, regenerated from
``labs/src/<lab>.ipynb`` by this command unless ``--autograder ZIP`` names one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coursekit import REPO_ROOT

SOURCES_DIR = REPO_ROOT / "labs" / "src"
DIST_DIR = REPO_ROOT / "labs" / "dist"

# Environment variables of the lab setup cell that must not act while grading (they install
# packages or download files); see coursekit/lab_template.py.
SCRUBBED_ENV = ("JAXLLM_INSTALL_SOURCE", "JAXLLM_LABS_URL")
# How the labs' tests say that a graded function is not the student's own code (the start of
# the messages of jaxllm.labcheck.NotYourCode, its MARKER; a test checks that they agree).
DELEGATION_MARKER = "not your own code:"
SUBMISSION_NAME = "submission.ipynb"
RESULT_NAME = "result.json"
OUTPUT_STATUS_NAME = "output.json"  # how much output the worker discarded so far
LOG_NAME = "worker.log"
POLL_S = 0.2
# The worker is this module's main(), started in the grading folder; the repository root is put
# on its path here rather than in PYTHONPATH, which the notebook's kernel would inherit.
WORKER_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                    "from coursekit.grade_labs import main; sys.exit(main())")


@dataclass(frozen=True)
class Limits:
    """Per-notebook limits (see the module docstring)."""

    timeout_s: float = 600.0
    max_output_mb: float = 20.0
    max_memory_mb: float = 4096.0
    max_file_mb: float = 256.0

    def __post_init__(self) -> None:
        for name in ("timeout_s", "max_output_mb", "max_memory_mb", "max_file_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class Question:
    name: str
    possible: float
    test_names: dict[str, str]  # otter's test case name ("q2 - 1") -> test function name
    hidden: dict[str, bool]  # otter's test case name -> whether it is hidden


@dataclass
class Grade:
    student: str
    scores: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.scores.values())


# ---------------------------------------------------------------------------------------------
# The autograder archive


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_questions(autograder_zip: Path) -> tuple[str | None, list[Question]]:
    """The assignment name and the questions (with their points) of an autograder archive."""
    from otter.nbmeta_config import NBMetadataConfig
    from otter.test_files import create_test_file

    with tempfile.TemporaryDirectory(prefix="grade-labs-tests-") as tmp, zipfile.ZipFile(
            autograder_zip) as zf:
        zf.extractall(tmp)
        config_path = Path(tmp, "otter_config.json")
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        questions = []
        for path in sorted(Path(tmp, "tests").glob("*.py"), key=lambda p: _natural_key(p.stem)):
            test_file = create_test_file(str(path), NBMetadataConfig())
            names = _test_function_names(path)
            questions.append(Question(
                name=test_file.name,
                possible=float(test_file.possible),
                test_names={tc.name: names.get(tc.name, tc.name) for tc in test_file.test_cases},
                hidden={tc.name: bool(tc.hidden) for tc in test_file.test_cases},
            ))
    if not questions:
        raise ValueError(f"{autograder_zip}: the archive has no tests/*.py")
    return config.get("assignment_name"), questions


def _test_function_names(path: Path) -> dict[str, str]:
    """Map otter's default test case names ("q1 - 2") to the test functions' names."""
    from otter.test_files import test_case

    env: dict[str, Any] = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), env)
    names, n = {}, 0
    for value in env.values():  # the order in which otter numbers the test cases
        if isinstance(value, test_case):
            n += 1
            names[value.name or f"{env.get('name')} - {n}"] = value.test_func.__name__
    return names


def build_autograder(lab: str | None) -> Path:
    """Regenerate ``labs/dist/<lab>/<lab>-autograder.zip`` from the lab's source."""
    from coursekit import assign_labs  # only the instructors' command regenerates archives

    sources = assign_labs.lab_sources([lab] if lab else None)
    if len(sources) != 1:
        raise ValueError(
            f"several labs in {SOURCES_DIR} ({', '.join(p.stem for p in sources)}): "
            "name one with --lab"
        )
    return assign_labs.assign_lab(sources[0]).autograder_zip


# ---------------------------------------------------------------------------------------------
# Submissions


def find_submissions(folder: Path) -> list[tuple[str, Path | None, str]]:
    """``(student, notebook or None, problem)`` for each submission in ``folder``, sorted.

    ``<student>.ipynb`` files and ``<student>/`` folders holding one ``.ipynb`` each count;
    hidden entries (``.ipynb_checkpoints``) and other files are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"submissions folder must be an existing directory, got {str(folder)!r}")
    found: dict[str, tuple[Path | None, str]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".ipynb":
            student, notebook, problem = entry.stem, entry, ""
        elif entry.is_dir():
            notebooks = sorted(p for p in entry.rglob("*.ipynb")
                               if not any(part.startswith(".") for part in p.parts))
            student = entry.name
            notebook = notebooks[0] if len(notebooks) == 1 else None
            problem = "" if notebook else (
                f"{len(notebooks)} notebooks in {entry.name}/ (expected one)" if notebooks
                else f"no notebook in {entry.name}/")
        else:
            continue
        if student in found:
            raise ValueError(f"two submissions for student {student!r} in {folder}")
        found[student] = (notebook, problem)
    return [(s, nb, problem) for s, (nb, problem) in sorted(found.items())]


# ---------------------------------------------------------------------------------------------
# The parent: one worker process per notebook, watched


def _worker_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    # Temporary files of the worker, of otter and of the notebook stay in the grading folder,
    # which is deleted afterwards.
    (work / "tmp").mkdir()
    env["TMPDIR"] = str(work / "tmp")
    env.setdefault("JAX_PLATFORMS", "cpu")  # several kernels at once must not fight over a GPU
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _kill(processes: list[Any]) -> None:
    import psutil

    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(processes, timeout=10)


def grade_notebook(student: str, notebook: Path, zip_bytes: bytes, questions: list[Question],
                   limits: Limits, keep_dir: Path | None = None) -> Grade:
    """Grade one notebook in a worker process; never raises for anything the notebook does."""
    import psutil

    grade = Grade(student, {q.name: 0.0 for q in questions})
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="grade-lab-"))
    try:
        shutil.copyfile(notebook, work / SUBMISSION_NAME)
        (work / "autograder.zip").write_bytes(zip_bytes)
        command = [
            sys.executable, "-c", WORKER_BOOTSTRAP, str(REPO_ROOT), "--worker", str(work),
            "--max-output-mb", str(limits.max_output_mb),
            "--max-file-mb", str(limits.max_file_mb),
        ]
        max_log = limits.max_file_mb * 2**20
        with open(work / LOG_NAME, "wb") as log:
            popen = subprocess.Popen(command, cwd=work, env=_worker_env(work),
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        worker = psutil.Process(popen.pid)
        seen: dict[int, Any] = {}
        stopped = ""
        while popen.poll() is None:
            try:
                popen.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(psutil.Error):
                for child in worker.children(recursive=True):
                    seen.setdefault(child.pid, child)
            rss = 0
            for proc in [worker, *seen.values()]:
                with contextlib.suppress(psutil.Error):
                    rss += proc.memory_info().rss
            elapsed = time.monotonic() - start
            if elapsed > limits.timeout_s:
                stopped = f"stopped after the {limits.timeout_s:g} s time limit (endless loop?)"
            elif rss > limits.max_memory_mb * 2**20:
                stopped = (f"stopped: used {rss / 2**20:.0f} MB, over the "
                           f"{limits.max_memory_mb:g} MB memory limit")
            elif (work / LOG_NAME).stat().st_size > max_log:
                stopped = f"stopped: wrote over {limits.max_file_mb:g} MB to its standard output"
            if stopped:
                _kill([worker, *seen.values()])
                break
        # Whatever the worker started and left behind (a kernel, its children) goes too.
        _kill([p for p in seen.values() if p.is_running()])
        if stopped:
            grade.reasons.append(stopped + _discarded_output(work))
            return grade
        _apply_result(grade, work, questions, popen.returncode)
        return grade
    except OSError as error:  # the notebook could not even be copied or the worker started
        grade.reasons.append(f"not graded: {error}")
        return grade
    finally:
        grade.seconds = time.monotonic() - start
        if keep_dir is not None:
            with contextlib.suppress(OSError, shutil.Error):
                shutil.copytree(work, keep_dir / student, dirs_exist_ok=True, symlinks=True,
                                ignore_dangling_symlinks=True)
        shutil.rmtree(work, ignore_errors=True)


def _discarded_output(work: Path) -> str:
    try:
        dropped = json.loads((work / OUTPUT_STATUS_NAME).read_text())["dropped"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"; it had printed {dropped / 2**20:.0f} MB past the output limit"


def _log_tail(work: Path, n: int = 600) -> str:
    try:
        with open(work / LOG_NAME, "rb") as f:
            f.seek(max(0, (work / LOG_NAME).stat().st_size - n))
            return f.read().decode("utf-8", "replace").strip().replace("\n", " | ")
    except OSError:
        return ""


def _apply_result(grade: Grade, work: Path, questions: list[Question], returncode: int) -> None:
    try:
        result = json.loads((work / RESULT_NAME).read_text(encoding="utf-8"))
        if not isinstance(result, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        grade.reasons.append(
            f"the grading process ended (exit code {returncode}) without a result ({error}); "
            f"log: {_log_tail(work)}"
        )
        return
    if result.get("error"):
        grade.reasons.append(str(result["error"]))
    grade.reasons.extend(str(note) for note in result.get("notes", []))
    scores, failed = result.get("scores", {}), result.get("failed", {})
    for q in questions:
        if result.get("error"):
            break
        score = scores.get(q.name)
        if not isinstance(score, int | float) or not math.isfinite(score):
            grade.reasons.append(f"{q.name} not graded")
            continue
        grade.scores[q.name] = min(max(float(score), 0.0), q.possible)
        if q.name in result.get("voided", []):
            continue  # the note says why
        missed = [t for t in failed.get(q.name, []) if t in q.test_names]
        delegated = result.get("delegated", {}).get(q.name)
        if grade.scores[q.name] < q.possible:
            if isinstance(delegated, str) and delegated:
                detail = delegated[:300]  # says which function and which package code
            elif len(missed) == len(q.test_names):
                detail = "all tests failed"
            else:
                detail = "failed " + ", ".join(
                    f"{q.test_names[t]}{' (hidden)' if q.hidden[t] else ''}" for t in missed)
            grade.reasons.append(
                f"{q.name} {_number(grade.scores[q.name])}/{_number(q.possible)}: {detail}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3f}".rstrip("0")


def grade_folder(submissions: Path, autograder_zip: Path, limits: Limits, jobs: int = 1,
                 keep_dir: Path | None = None,
                 progress: Any = None) -> tuple[list[Question], list[Grade]]:
    """Grade every submission of a folder; ``progress(grade)`` is called as each finishes."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    autograder_zip = Path(autograder_zip)
    if not autograder_zip.is_file():
        raise ValueError(f"autograder archive not found: {str(autograder_zip)!r}")
    # Read once: each worker gets its own copy of these bytes, so a submission that edits the
    # archive on disk cannot change what the next one is graded with.
    zip_bytes = autograder_zip.read_bytes()
    _, questions = read_questions(autograder_zip)
    entries = find_submissions(submissions)

    def one(entry: tuple[str, Path | None, str]) -> Grade:
        student, notebook, problem = entry
        if notebook is None:
            grade = Grade(student, {q.name: 0.0 for q in questions}, [problem])
        else:
            grade = grade_notebook(student, notebook, zip_bytes, questions, limits, keep_dir)
        if progress is not None:
            progress(grade)
        return grade

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        grades = list(pool.map(one, entries))
    return questions, grades


def _cell(text: str) -> str:
    """A CSV cell that spreadsheets do not read as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_csv(path: Path, questions: list[Question], grades: list[Grade]) -> str:
    """Write the grades as CSV to ``path`` (``-`` for none) and return the CSV text."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", *(q.name for q in questions), "total", "reason"])
    for g in grades:
        writer.writerow([_cell(g.student), *(_number(g.scores[q.name]) for q in questions),
                         _number(g.total), _cell("; ".join(g.reasons))])
    text = buffer.getvalue()
    if str(path) != "-":
        Path(path).write_text(text, encoding="utf-8")
    return text


# ---------------------------------------------------------------------------------------------
# The worker: runs otter's autograder on one notebook (started by grade_notebook)


def _limit_file_size(max_bytes: int) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no resource module
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))


def _output_size(content: Any) -> int:
    """Characters in one output message (stream text, display data, traceback)."""
    try:
        size = len(content.get("text") or "")
        for value in (content.get("data") or {}).values():
            size += len(value) if isinstance(value, str) else len(json.dumps(value, default=str))
        return size + sum(len(line) for line in content.get("traceback") or [])
    except (AttributeError, TypeError):
        return len(json.dumps(content, default=str))


def _instrument_nbclient(max_output_bytes: int, status_path: Path) -> dict[str, Any]:
    """Cap the outputs nbclient keeps, and note when the kernel is started.

    The amount discarded is also written to ``status_path`` now and then, so that the parent
    can say how much a notebook had printed when it had to be stopped.
    """
    from nbclient.client import NotebookClient

    state: dict[str, Any] = {"kept": 0, "dropped": 0, "reported": 0, "kernel_started": None}
    keep_output, create_kernel_manager = NotebookClient.output, NotebookClient.create_kernel_manager

    def output(self: Any, outs: Any, msg: dict[str, Any], display_id: Any, cell_index: int) -> Any:
        size = _output_size(msg.get("content", {}))
        if state["kept"] + size > max_output_bytes:
            state["dropped"] += size
            if state["dropped"] >= state["reported"] + 2**24:
                state["reported"] = state["dropped"]
                with contextlib.suppress(OSError):
                    status_path.write_text(json.dumps({"dropped": state["dropped"]}))
            return None
        state["kept"] += size
        return keep_output(self, outs, msg, display_id, cell_index)

    def create_kernel_manager_noting_time(self: Any) -> Any:
        state["kernel_started"] = time.time_ns()
        return create_kernel_manager(self)

    NotebookClient.output = output
    NotebookClient.create_kernel_manager = create_kernel_manager_noting_time
    return state


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prepare_submission(source: Path, target: Path, assignment: str | None,
                        notes: list[str]) -> None:
    import nbformat

    nb = nbformat.read(source, as_version=4)
    # Graded with this environment's Python kernel, whatever kernel the notebook names.
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    otter_meta = nb.metadata.setdefault("otter", {})
    if assignment and not otter_meta.get("assignment_name"):
        otter_meta["assignment_name"] = assignment
        notes.append("notebook had no otter metadata (cells copied into a new notebook?)")
    nbformat.write(nb, target)


def run_worker(work: Path, max_output_mb: float, max_file_mb: float) -> int:
    """Grade ``work/submission.ipynb`` with ``work/autograder.zip``; write ``work/result.json``."""
    result: dict[str, Any] = {"scores": {}, "failed": {}, "delegated": {}, "voided": [],
                              "notes": [], "error": None}
    ag = work / "autograder"
    try:
        _limit_file_size(int(max_file_mb * 2**20))
        state = _instrument_nbclient(int(max_output_mb * 2**20), work / OUTPUT_STATUS_NAME)
        for sub in ("source", "submission", "results"):
            (ag / sub).mkdir(parents=True)
        (ag / "submission_metadata.json").write_text("{}")
        with zipfile.ZipFile(work / "autograder.zip") as zf:
            zf.extractall(ag / "source")
        expected = {p.name: _sha256(p) for p in (ag / "source" / "tests").glob("*.py")}
        config = json.loads((ag / "source" / "otter_config.json").read_text())
        try:
            _prepare_submission(work / SUBMISSION_NAME, ag / "submission" / SUBMISSION_NAME,
                                config.get("assignment_name"), result["notes"])
        except Exception as error:
            raise _Ungradable(f"not a readable notebook: {type(error).__name__}: {error}") from None

        from nbclient.exceptions import DeadKernelError
        from otter.run.run_autograder import main as run_autograder

        error, results = None, None
        try:
            with contextlib.redirect_stdout(sys.stderr):
                run_autograder(str(ag), otter_run=True, logo=False, debug=False)
        except DeadKernelError:
            error = ("the kernel died (the notebook ended Python, e.g. with os._exit, or "
                     "crashed it)")
        except Exception as exc:
            missing = [p for p in ("source/tests", "submission/tests", "results")
                       if not (ag / p).is_dir()]
            if missing:
                raise _Ungradable(f"the notebook deleted grading files ({', '.join(missing)})"
                                  ) from None
            error = f"grading failed: {type(exc).__name__}: {exc}"
        if error is None:
            import dill

            with open(ag / "results" / "results.pkl", "rb") as f:
                results = dill.load(f)
            if results.catastrophic_error is not None:
                error = (f"grading failed: otter recorded no results "
                         f"({results.catastrophic_error!r})")
        tampered = _tampered_tests(ag / "submission" / "tests", expected,
                                   state["kernel_started"])
        if error is not None:
            if tampered:
                error = f"the notebook changed its test files ({', '.join(tampered)}); {error}"
            raise _Ungradable(error)
        for name, test_file in results.results.items():
            result["scores"][name] = float(test_file.score)
            result["failed"][name] = [r.test_case.name for r in test_file.test_case_results
                                      if not r.passed]
            delegated = [_delegation(r.message) for r in test_file.test_case_results
                         if not r.passed]
            if any(delegated):
                result["delegated"][name] = next(d for d in delegated if d)
        for name in tampered:
            question = name.removesuffix(".py")
            result["scores"][question] = 0.0
            result["voided"].append(question)
            result["notes"].append(f"{question} voided: the notebook changed its test file {name}")
        if state["dropped"]:
            result["notes"].append(
                f"output over {max_output_mb:g} MB discarded "
                f"({state['dropped'] / 2**20:.0f} MB not kept)")
    except _Ungradable as error:
        result["error"] = str(error)
    except Exception as error:  # anything else: still report, never crash without a result
        result["error"] = f"grading failed: {type(error).__name__}: {error}"
    text = json.dumps(result)
    tmp = work / (RESULT_NAME + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, work / RESULT_NAME)
    return 0


def _delegation(message: str | None) -> str:
    """The reason of a test that failed because the function is not the student's own code
    (the message of ``jaxllm.labcheck.NotYourCode``), or ``""``."""
    match = re.search(re.escape(DELEGATION_MARKER) + r"[^\n]*", message or "")
    return match.group(0).strip() if match else ""


class _Ungradable(Exception):
    """A reason to give the whole notebook zero."""


def _tampered_tests(tests_dir: Path, expected: dict[str, str],
                    kernel_started_ns: int | None) -> list[str]:
    """Test files that differ from the archive's, or were changed after the kernel started."""
    tampered = []
    for name, digest in sorted(expected.items()):
        path = tests_dir / name
        try:
            changed = _sha256(path) != digest or (
                kernel_started_ns is not None and path.stat().st_ctime_ns > kernel_started_ns)
        except OSError:
            changed = True
        if changed:
            tampered.append(name)
    return tampered


# ---------------------------------------------------------------------------------------------
# Command line


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _jobs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker = argparse.ArgumentParser()
        worker.add_argument("--worker", type=Path, required=True)
        worker.add_argument("--max-output-mb", type=_positive, required=True)
        worker.add_argument("--max-file-mb", type=_positive, required=True)
        w = worker.parse_args(argv)
        return run_worker(w.worker, w.max_output_mb, w.max_file_mb)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", type=Path, help="folder of submitted notebooks")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--lab", help="lab name (needed only when labs/src has several)")
    parser.add_argument("--autograder", type=Path,
                        help="autograder zip (default: regenerated from labs/src/<lab>.ipynb)")
    parser.add_argument("--timeout", type=_positive, default=Limits.timeout_s,
                        help="seconds per notebook (default: %(default)s)")
    parser.add_argument("--max-output-mb", type=_positive, default=Limits.max_output_mb,
                        help="output kept per notebook (default: %(default)s)")
    parser.add_argument("--max-memory-mb", type=_positive, default=Limits.max_memory_mb,
                        help="memory per notebook, all its processes (default: %(default)s)")
    parser.add_argument("--max-file-mb", type=_positive, default=Limits.max_file_mb,
                        help="largest file a notebook may write (default: %(default)s)")
    parser.add_argument("--jobs", type=_jobs, default=1,
                        help="notebooks graded at once (default: %(default)s)")
    parser.add_argument("--keep", type=Path,
                        help="copy each notebook's grading folder (logs, results) here")
    args = parser.parse_args(argv)
    if not args.submissions.is_dir():
        parser.error(f"SUBMISSIONS must be an existing folder, got {str(args.submissions)!r}")
    if args.out.is_dir() or not args.out.resolve().parent.is_dir():
        parser.error(f"--out must be a file in an existing folder, got {str(args.out)!r}")
    if args.autograder is not None and not args.autograder.is_file():
        parser.error(f"--autograder must be an existing zip file, got {str(args.autograder)!r}")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    limits = Limits(args.timeout, args.max_output_mb, args.max_memory_mb, args.max_file_mb)
    try:
        autograder = args.autograder or build_autograder(args.lab)
    except ValueError as error:
        parser.error(str(error))
    assignment, questions = read_questions(autograder)
    possible = sum(q.possible for q in questions)
    print(f"grading {args.submissions} with {autograder} ({assignment}: "
          f"{', '.join(q.name for q in questions)}; {_number(possible)} points)", file=sys.stderr)

    def progress(g: Grade) -> None:
        print(f"  {g.student}: {_number(g.total)}/{_number(possible)} in {g.seconds:.1f} s",
              file=sys.stderr, flush=True)

    start = time.monotonic()
    questions, grades = grade_folder(args.submissions, autograder, limits, args.jobs, args.keep,
                                     progress)
    text = write_csv(args.out, questions, grades)
    print(text, end="")
    where = "" if str(args.out) == "-" else f"; wrote {args.out}"
    print(f"graded {len(grades)} submission(s) in {time.monotonic() - start:.1f} s{where}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
