"""The graded-labs pipeline, end to end (otter-grader; see instructors.md).

- every lab source and student notebook starts with the lab setup cell of coursekit.lab_template;
- regenerating the labs from their sources changes nothing committed;
- the student notebook holds no solution code and no hidden test (searched for);
- grading a folder (scripts/grade_labs.py, the instructors' command): the solution scores full
  marks, the untouched student notebook zero without grader errors, a planted wrong answer
  exactly the partial credit its tests give it, a submission that delegates graded functions to
  the package's own implementations (imports, wrappers, a lambda, a getattr detour) zero on
  those questions with the reason "not your own code", and hostile notebooks (endless loop,
  endless output, kernel crash, deleted files, edited tests, memory hog) zero with a reason,
  without disturbing the others;
- every test of the lab checks first that the functions it grades are the student's own code
  (``jaxllm.labcheck.own_code``, tested in tests/test_labcheck.py);
- the student flow as Colab sees it: the student notebook alone in an empty folder, the package
  installed by its setup cell from the local checkout instead of GitHub: the setup cell finds the
  public tests, and ``grader.check`` reports failures on the blank notebook (without stopping it)
  and passes with the solutions filled in.

Grading runs notebooks in kernels, so the expensive runs happen once per module (fixtures) and
the tests read their results.
"""

from __future__ import annotations

import ast
import copy
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pytest

pytest.importorskip("otter", reason="the labs need otter-grader: pip install -e '.[grade]'")
psutil = pytest.importorskip("psutil", reason="grade_labs.py needs psutil")

REPO = Path(__file__).resolve().parents[1]
LABS = REPO / "labs"
LAB = "tokens-and-sampling"
ANSWER_TAG = "otter_answer_cell"
SOLUTION_CELL_TAG = "otter_assign_solution_cell"

# After the importorskips: the lab tooling imports otter lazily, but needs psutil to grade.
from coursekit import assign_labs, grade_labs, lab_template, notebook_template  # noqa: E402

pytestmark = pytest.mark.integration

# A plausible mistake for q2: the temperature-0 case is forgotten (division by zero).
WRONG_SOFTMAX = '''
def softmax_with_temperature(logits, temperature):
    logits = np.asarray(logits, dtype=np.float64)
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
'''.strip()

QUESTIONS = [f"q{i}" for i in range(1, 8)]
# The package's module that holds the reference implementations of each question.
BANNED = {"q1": "tokenizer", "q2": "sample", "q3": "model", "q4": "sample", "q5": "model",
          "q6": "sample", "q7": "tokenizer"}

# The preferences lab (11.4): every reference implementation is in jaxllm.losses.
PREF = "preferences"
PREF_QUESTIONS = ["q1", "q2", "q3"]
PREF_BANNED = dict.fromkeys(PREF_QUESTIONS, "losses")

# The counting-parameters lab (11.1): parameter counts and 6ND against jaxllm.model, perplexity
# and bits per character against jaxllm.train.
LAB2 = "counting-parameters"
QUESTIONS2 = ["q1", "q2", "q3", "q4"]
BANNED2 = {"q1": "model", "q2": "model", "q3": "model", "q4": "train"}
# Each lab's banned modules and questions, for the structure checks run on every lab.
LAB_QUESTIONS = {LAB: (BANNED, QUESTIONS), "preferences": (PREF_BANNED, PREF_QUESTIONS),
                 LAB2: (BANNED2, QUESTIONS2)}

# A submission that lets the package do the work (answer cell start -> replacement). q5 is
# answered honestly, without the q3 functions (whose causal_mask is the package's here).
DELEGATING = {
    # The brief's case: the answer cells only import the package's functions.
    "def pair_counts": "from jaxllm.tokenizer import merge_pair, pair_counts",
    "def softmax_with_temperature": "from jaxllm.sample import softmax_with_temperature",
    "def causal_mask": '''
from jaxllm.model import causal_mask


def causal_attention_weights(scores):
    scores = np.asarray(scores, dtype=np.float64)
    masked = np.where(causal_mask(scores.shape[-1]), scores, -np.inf)
    e = np.exp(masked - masked.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
''',
    # A def wrapper.
    "def top_p_filter": '''
import jaxllm.sample


def top_p_filter(logits, p):
    return np.asarray(jaxllm.sample.top_p_filter(logits, p), dtype=np.float64)
''',
    "def attention_head": '''
def attention_head(x, w_q, w_k, w_v):
    x = np.asarray(x, dtype=np.float64)
    q, k, v = x @ w_q, x @ w_k, x @ w_v
    scores = q @ k.T / np.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones(scores.shape, bool)), scores, -np.inf)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = e / e.sum(axis=-1, keepdims=True)
    return weights @ v, weights
''',
    # A lambda, and a generation loop that is the student's own but uses it.
    "import jax\nimport jax.numpy as jnp": '''
import jax
import jax.numpy as jnp
from jaxllm import sample

top_k_filter = lambda logits, k: sample.top_k_filter(logits, k or 0)  # noqa: E731


def generate_tokens(next_logits, prompt, max_new_tokens, key, temperature=1.0, top_k=None):
    tokens, new = list(prompt), []
    for _ in range(max_new_tokens):
        key, sub = jax.random.split(key)
        logits = np.asarray(next_logits(tokens), dtype=np.float32)
        if temperature == 0:
            token = int(np.argmax(logits))
        else:
            z = top_k_filter(logits / np.float32(temperature), top_k)
            token = int(jax.random.categorical(sub, jnp.asarray(z)))
        tokens.append(token)
        new.append(token)
    return new
''',
    # A detour that no reading of the code follows: caught while it runs.
    "def train_bpe": '''
import importlib


def train_bpe(text, num_merges):
    module = importlib.import_module("jaxllm." + "tokenizer")
    return getattr(module, "BPE" + "Tokenizer").train(text, 256 + num_merges).merges
''',
}
DELEGATED_REASONS = {
    "q1": "q1 0/4: not your own code: pair_counts is jaxllm.tokenizer.pair_counts, the "
          "package's own implementation (write your own)",
    "q2": "q2 0/4: not your own code: softmax_with_temperature is "
          "jaxllm.sample.softmax_with_temperature, the package's own implementation (write your "
          "own)",
    "q3": "q3 0/4: not your own code: ",
    "q4": "q4 0/4: not your own code: top_p_filter uses the module jaxllm.sample, which holds "
          "the package's own implementation (write your own)",
    "q6": "q6 0/4: not your own code: ",
    "q7": "q7 0/4: not your own code: train_bpe calls jaxllm.tokenizer.BPETokenizer.train, the "
          "package's own implementation (write your own)",
}


# ---------------------------------------------------------------------------------------------
# Fixtures: generate once, build the planted submissions, grade once


@pytest.fixture(scope="module")
def assigned(tmp_path_factory):
    """``otter assign`` on the lab source, into a temporary dist folder."""
    return assign_labs.assign_lab(LABS / "src" / f"{LAB}.ipynb",
                                  tmp_path_factory.mktemp("dist"))


def _solutions_filled_in(assigned) -> nbformat.NotebookNode:
    """The student notebook with each answer cell replaced by otter's solution cell."""
    student = nbformat.read(assigned.student_notebook, as_version=4)
    solution = nbformat.read(assigned.solution_notebook, as_version=4)
    assert len(student.cells) == len(solution.cells)
    filled = copy.deepcopy(student)
    answers = 0
    for cell, solved in zip(filled.cells, solution.cells, strict=True):
        if ANSWER_TAG in cell.metadata.get("tags", []):
            cell.source = solved.source
            answers += 1
        else:
            assert cell.source == solved.source
    assert answers == len(QUESTIONS)
    return filled


def _first_questions_solved(assigned, filled) -> nbformat.NotebookNode:
    """The solved notebook with the answers of q5-q7 left blank: a cheaper base for hostile
    notebooks whose grade does not depend on those answers (blank answers fail fast)."""
    student = nbformat.read(assigned.student_notebook, as_version=4)
    nb = copy.deepcopy(filled)
    answers = [i for i, c in enumerate(nb.cells) if ANSWER_TAG in c.metadata.get("tags", [])]
    for i in answers[4:]:
        nb.cells[i].source = student.cells[i].source
    return nb


def _replace_answer(nb: nbformat.NotebookNode, startswith: str, source: str):
    nb = copy.deepcopy(nb)
    cells = [c for c in nb.cells if c.source.startswith(startswith)]
    assert len(cells) == 1
    cells[0].source = source
    return nb


def _insert_after_answer(nb: nbformat.NotebookNode, startswith: str, source: str):
    nb = copy.deepcopy(nb)
    index = next(i for i, c in enumerate(nb.cells) if c.source.startswith(startswith))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


def _hostile(filled, code: str):
    """The solved notebook with a hostile cell right after the first answer (q1's)."""
    return _insert_after_answer(filled, "def pair_counts", textwrap.dedent(code).strip())


def _grade_cli(folder: Path, zip_path: Path, out: Path, *options: str) -> tuple[dict, str]:
    """Run the instructors' command; return the CSV rows by student and the printed text."""
    command = [sys.executable, str(REPO / "scripts" / "grade_labs.py"), str(folder),
               "--out", str(out), "--autograder", str(zip_path), *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert done.stdout == text  # the CSV is printed as well as written
    rows = {row["student"]: row for row in csv.DictReader(io.StringIO(text))}
    return rows, text


@pytest.fixture(scope="module")
def graded(assigned, tmp_path_factory):
    """Grade one folder: solution, blank, a wrong answer, and hostile notebooks that finish."""
    folder = tmp_path_factory.mktemp("submissions")
    filled = _solutions_filled_in(assigned)
    nbformat.write(filled, folder / "solution.ipynb")
    shutil.copyfile(assigned.student_notebook, folder / "blank.ipynb")
    nbformat.write(_replace_answer(filled, "def softmax_with_temperature", WRONG_SOFTMAX),
                   folder / "wrong.ipynb")
    delegating = filled
    for start, source in DELEGATING.items():
        delegating = _replace_answer(delegating, start, source.strip())
    nbformat.write(delegating, folder / "delegating.ipynb")
    hostile = {
        "crash": "import os\nos._exit(3)",
        "deletes": """
            import os, shutil
            shutil.rmtree(os.path.abspath(".."), ignore_errors=True)
            """,
        # Edits the tests so that they pass, runs them, and puts the originals back.
        "edits": """
            import glob
            saved = {path: open(path).read() for path in glob.glob("tests/*.py")}
            for path, text in saved.items():
                open(path, "w").write(text.replace("assert ", "assert True or "))
            for question in ["q1", "q2", "q3", "q4", "q5", "q6", "q7"]:
                grader.check(question)
            for path, text in saved.items():
                open(path, "w").write(text)
            """,
        # Empties the test files: otter itself cannot finish.
        "empties": """
            import glob
            for path in glob.glob("tests/*.py"):
                open(path, "w").close()
            """,
        "floods": """
            for _ in range(60):
                print("x" * 1_000_000)
            """,
        "hog": """
            chunks = []
            while True:
                chunks.append(bytearray(50_000_000))
            """,
    }
    partly = _first_questions_solved(assigned, filled)
    for name, code in hostile.items():
        # Only the output flood is graded in full (it must still score full marks).
        nbformat.write(_hostile(filled if name == "floods" else partly, code),
                       folder / f"{name}.ipynb")
    start = time.monotonic()
    rows, text = _grade_cli(folder, assigned.autograder_zip, folder / "grades.csv",
                            "--timeout", "300", "--max-output-mb", "5",
                            "--max-memory-mb", "1500", "--jobs", "2")
    print(f"\ngraded {len(rows)} notebooks in {time.monotonic() - start:.1f} s:\n{text}")
    return rows


@pytest.fixture(scope="module")
def stopped(assigned, tmp_path_factory):
    """Grade notebooks that never finish (short time limit); they note their kernel's PID."""
    folder = tmp_path_factory.mktemp("endless")
    filled = _solutions_filled_in(assigned)
    pids = {}
    for name, loop in [("loops", "while True:\n    pass"),
                       ("prints", "while True:\n    print('x' * 1_000_000)")]:
        pids[name] = folder / f"{name}.pid"
        code = f"import os\nopen({str(pids[name])!r}, 'w').write(str(os.getpid()))\n{loop}"
        nbformat.write(_hostile(filled, code), folder / f"{name}.ipynb")
    rows, _ = _grade_cli(folder, assigned.autograder_zip, folder / "grades.csv",
                         "--timeout", "25", "--max-output-mb", "5", "--max-memory-mb", "1500",
                         "--jobs", "2")
    return rows, {name: int(path.read_text()) for name, path in pids.items()}


# ---------------------------------------------------------------------------------------------
# The notebooks themselves


def test_every_lab_notebook_starts_with_the_lab_cell():
    sources = sorted((LABS / "src").glob("*.ipynb"))
    students = sorted(LABS.glob("*.ipynb"))
    assert [p.stem for p in sources] == [p.stem for p in students] and LAB in [
        p.stem for p in sources]
    for path in sources + students:
        assert lab_template.check_notebook(path) == []
    cell = lab_template.lab_cell_source(LAB)
    url, branch = notebook_template.repository()
    assert f"git+{url}@{branch}" in cell  # installs from the repository of _config.yml
    assert lab_template.labs_url().endswith(f"/{branch}/labs")
    assert "otter-grader" in cell and "grader = otter.Notebook(" in cell


def test_lab_template_detects_a_wrong_first_cell(tmp_path):
    nb = nbformat.read(LABS / f"{LAB}.ipynb", as_version=4)
    first = lab_template.first_code_cell_index(nb)
    nb.cells[first].source = nb.cells[first].source.replace("otter-grader>=", "otter-grader==")
    path = tmp_path / f"{LAB}.ipynb"
    nbformat.write(nb, path)
    assert lab_template.check_notebook(path)
    assert lab_template.stamp_notebook(path) is True
    assert lab_template.check_notebook(path) == []


@pytest.mark.parametrize("name", ["Tokens", "tokens_and_sampling", "-x", "", None, "a/b"])
def test_lab_names_are_checked(name):
    with pytest.raises(ValueError, match="lab name"):
        lab_template.check_lab_name(name)
    if isinstance(name, str) and name:
        with pytest.raises(ValueError, match="lab name"):
            lab_template.lab_cell_source(name)


def test_unknown_lab_is_a_clear_error():
    with pytest.raises(ValueError, match="no-such-lab"):
        assign_labs.lab_sources(["no-such-lab"])


def test_regenerating_changes_nothing_committed(assigned):
    committed = LABS / f"{LAB}.ipynb"
    assert committed.read_bytes() == assigned.student_notebook.read_bytes(), (
        "labs/ is stale: run python scripts/assign_labs.py")


def _source_cells(kind: str, lab: str = LAB) -> list[nbformat.NotebookNode]:
    """Code cells of the lab source inside SOLUTION (kind='solution') or TESTS blocks."""
    nb = nbformat.read(LABS / "src" / f"{lab}.ipynb", as_version=4)
    inside, found = None, []
    for cell in nb.cells:
        if cell.cell_type == "raw":
            first = cell.source.strip().lower()
            if first.startswith(("# begin solution", "# begin tests")):
                inside = first.split()[2]
            elif first.startswith(("# end solution", "# end tests")):
                inside = None
        elif cell.cell_type == "code" and inside == kind:
            found.append(cell)
    return found


def _test_config(cell) -> dict:
    import yaml

    match = re.match(r'"""\s*# BEGIN TEST CONFIG\n(.*?)\n"""\s*# END TEST CONFIG', cell.source,
                     re.S)
    assert match, cell.source[:80]
    return yaml.safe_load(match.group(1))


def _test_function(cell) -> ast.FunctionDef:
    tree = ast.parse(cell.source)
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert len(functions) == 1
    return functions[0]


def test_questions_have_public_and_hidden_tests_with_points(assigned):
    _, questions = grade_labs.read_questions(assigned.autograder_zip)
    assert [q.name for q in questions] == QUESTIONS
    for q in questions:
        hidden = list(q.hidden.values())
        assert any(hidden) and not all(hidden), q.name
        assert q.possible == len(hidden)  # one point per test: partial credit is predictable
    configs = [_test_config(c) for c in _source_cells("tests")]
    assert len(configs) == 28 and all(c["points"] == 1 for c in configs)


def _own_code_call(node: ast.AST, param: str) -> bool:
    """``labcheck.own_code(param, <module>)``: the one rebinding of a parameter allowed."""
    return (isinstance(node, ast.Call) and ast.unparse(node.func) == "labcheck.own_code"
            and len(node.args) == 2 and isinstance(node.args[0], ast.Name)
            and node.args[0].id == param)


def test_test_functions_do_not_shadow_the_students_functions():
    """A test that rebinds its parameter (say ``from jaxllm.sample import top_p_filter``)
    would compare jaxllm with itself and pass on a blank notebook. The one rebinding allowed
    is the delegation check, ``f = labcheck.own_code(f, module)``."""
    for cell in _source_cells("tests"):
        function = _test_function(cell)
        params = {a.arg for a in function.args.args}
        checks = {s.targets[0].id for s in function.body if isinstance(s, ast.Assign)
                  and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
                  and _own_code_call(s.value, s.targets[0].id)}
        bound = []
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.append(node.id)
            elif isinstance(node, ast.alias):
                bound.append(node.asname or node.name.split(".")[0])
        rebound = [name for name in bound if name in params]
        assert sorted(rebound) == sorted(checks), f"{function.name} rebinds {rebound}"


@pytest.mark.parametrize("lab", list(LAB_QUESTIONS))
def test_every_test_checks_first_that_the_functions_are_the_students_own(lab):
    """Each test, public and hidden, starts by passing every function it grades through
    ``jaxllm.labcheck.own_code`` with the module of the question's reference implementations,
    so a delegating answer fails all of its question's tests (and only those)."""
    banned, questions = LAB_QUESTIONS[lab]
    nb = nbformat.read(LABS / "src" / f"{lab}.ipynb", as_version=4)
    question, seen = None, {}
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.startswith("# BEGIN QUESTION"):
            question = re.search(r"name: (q\d+)", cell.source).group(1)
        if cell.cell_type != "code" or "# BEGIN TEST CONFIG" not in cell.source:
            continue
        function = _test_function(cell)
        params = [a.arg for a in function.args.args]
        body = function.body
        module = banned[question]
        assert ast.unparse(body[0]) == f"from jaxllm import labcheck, {module}", function.name
        for param, statement in zip(params, body[1:], strict=False):
            assert ast.unparse(statement) == f"{param} = labcheck.own_code({param}, {module})", (
                function.name)
        seen[question] = seen.get(question, 0) + 1
    assert seen == {q: 4 for q in questions}


def test_the_grader_recognises_the_checks_message():
    from jaxllm import labcheck

    assert grade_labs.DELEGATION_MARKER == labcheck.MARKER
    message = (f"Traceback ...\nNotYourCode: {labcheck.MARKER} f is jaxllm.sample.f, the "
               "package's own implementation (write your own)\n")
    assert grade_labs._delegation(message) == (f"{labcheck.MARKER} f is jaxllm.sample.f, the "
                                                "package's own implementation (write your own)")
    assert grade_labs._delegation("AssertionError: weights") == ""
    assert grade_labs._delegation(None) == ""


@pytest.mark.parametrize("lab", [*LAB_QUESTIONS, "calling-an-api"])
def test_student_notebook_has_no_solutions_and_no_hidden_tests(lab):
    questions = LAB_QUESTIONS[lab][1] if lab in LAB_QUESTIONS else ["q1", "q2", "q3"]
    student_text = (LABS / f"{lab}.ipynb").read_text(encoding="utf-8")
    student = nbformat.reads(student_text, as_version=4)
    source = nbformat.read(LABS / "src" / f"{lab}.ipynb", as_version=4)
    # Lines that appear only between BEGIN/END SOLUTION markers of the source.
    elsewhere = set()
    solution_lines = set()
    for cell in source.cells:
        inside = False
        for line in cell.source.splitlines():
            stripped = line.strip()
            if stripped == "# BEGIN SOLUTION":
                inside = True
            elif stripped == "# END SOLUTION":
                inside = False
            elif inside:
                solution_lines.add(stripped)
            else:
                elsewhere.add(stripped)
    unique = {line for line in solution_lines - elsewhere if len(line) >= 12}
    assert len(unique) >= 8  # the search below has something to find
    student_lines = {line.strip() for c in student.cells for line in c.source.splitlines()}
    assert not unique & student_lines
    for line in unique:
        assert json.dumps(line)[1:-1] not in student_text, line
    # Answer cells are there, with the prompts (...) instead of the code.
    answers = [c for c in student.cells if ANSWER_TAG in c.metadata.get("tags", [])]
    assert len(answers) == len(questions) and all("    ..." in c.source for c in answers)
    assert not any(SOLUTION_CELL_TAG in c.metadata.get("tags", []) for c in student.cells)
    # Tests: the public ones are in the metadata, the hidden ones nowhere.
    public, hidden = [], []
    for cell in _source_cells("tests", lab):
        (hidden if _test_config(cell)["hidden"] else public).append(_test_function(cell))
    assert public and hidden
    tests_text = "\n".join(student.metadata["otter"]["tests"].values())

    def statements(function: ast.FunctionDef) -> set[str]:
        return {ast.unparse(n) for n in ast.walk(function) if isinstance(n, ast.stmt)}

    public_statements = set().union(*map(statements, public))
    for function in public:  # the search works: what is public is found
        assert f"def {function.name}(" in tests_text
        assert all(s in tests_text for s in statements(function) if "\n" not in s)
    for function in hidden:
        assert function.name not in student_text
        own = [s for s in statements(function) - public_statements
               if len(s) > 30 and "\n" not in s]
        assert own, function.name
        for statement in own:
            assert statement not in tests_text, statement
    assert "hidden=True" not in tests_text
    # The source-only check cell (# IGNORE) is not in the student notebook either.
    assert "NBVAL_CHECK_OUTPUT" not in student_text


# ---------------------------------------------------------------------------------------------
# Grading


def _scores(row) -> list[float]:
    return [float(row[q]) for q in QUESTIONS]


@pytest.mark.slow
def test_solution_scores_full_marks(graded):
    assert _scores(graded["solution"]) == [4] * 7
    assert float(graded["solution"]["total"]) == 28
    assert graded["solution"]["reason"] == ""


@pytest.mark.slow
def test_untouched_student_notebook_scores_zero_without_grader_errors(graded):
    row = graded["blank"]
    assert _scores(row) == [0] * 7 and float(row["total"]) == 0
    # Every reason is a failed test, none is an error of the grading itself.
    reasons = row["reason"].split("; ")
    assert reasons == [f"q{i} 0/4: all tests failed" for i in range(1, 8)]


@pytest.mark.slow
def test_planted_wrong_answer_gets_the_partial_credit_of_its_tests(graded, assigned, tmp_path):
    """The score the hidden tests give the wrong function, computed here in-process with
    otter's own test runner, is what the grading run gave it; and it is 2 of 4."""
    from otter.nbmeta_config import NBMetadataConfig
    from otter.test_files import create_test_file

    with zipfile.ZipFile(assigned.autograder_zip) as zf:
        zf.extract("tests/q2.py", tmp_path)
    env = {"np": np}
    exec(WRONG_SOFTMAX, env)
    test_file = create_test_file(str(tmp_path / "tests" / "q2.py"), NBMetadataConfig())
    with np.errstate(divide="ignore", invalid="ignore"):  # the mistake divides by zero
        test_file.run(env)
    row = graded["wrong"]
    assert float(row["q2"]) == test_file.score == 2
    assert [float(row[q]) for q in QUESTIONS if q != "q2"] == [4] * 6
    assert float(row["total"]) == 26
    assert row["reason"] == ("q2 2/4: failed test_q2_temperature_zero_is_argmax, "
                             "test_q2_ties_at_temperature_zero (hidden)")


@pytest.mark.slow
def test_delegating_submission_scores_zero_on_the_delegated_questions(graded):
    """Answer cells that import the package's functions, wrap them (a def, a lambda) or reach
    them by a getattr detour score 0 on their questions, with the reason; q5, answered
    honestly, keeps its points. (Before the check, the imports alone scored 11 of 16.)"""
    row = graded["delegating"]
    assert _scores(row) == [0, 0, 0, 0, 4, 0, 0] and float(row["total"]) == 4
    reasons = row["reason"].split("; ")
    assert len(reasons) == 6, reasons
    for reason, (q, want) in zip(reasons, DELEGATED_REASONS.items(), strict=True):
        assert reason.startswith(want), (q, reason)
    assert "causal_mask" in reasons[2] and "jaxllm.model.causal_mask" in reasons[2]
    assert reasons[4].startswith("q6 0/4: not your own code: a lambda uses the module sample "
                                 "(jaxllm.sample)"), reasons[4]
    assert ";" not in "".join(reasons)  # each reason is one item of the list


@pytest.mark.slow
def test_kernel_crash_scores_zero_with_a_reason(graded):
    assert _scores(graded["crash"]) == [0] * 7
    assert "the kernel died" in graded["crash"]["reason"]


@pytest.mark.slow
def test_deleting_grading_files_scores_zero_with_a_reason(graded):
    assert _scores(graded["deletes"]) == [0] * 7
    assert "deleted grading files" in graded["deletes"]["reason"]


@pytest.mark.slow
def test_edited_tests_void_their_questions(graded):
    assert _scores(graded["edits"]) == [0] * 7
    for q in QUESTIONS:
        assert f"{q} voided: the notebook changed its test file {q}.py" in graded["edits"][
            "reason"]


def test_tampered_test_files_are_found_by_content_and_by_change_time(tmp_path):
    files = {name: tmp_path / name for name in ("q1.py", "q2.py", "q3.py", "q4.py")}
    for name, path in files.items():
        path.write_text(f"test {name}")
    expected = {name: grade_labs._sha256(path) for name, path in files.items()}
    started = max(path.stat().st_ctime_ns for path in files.values())
    files["q1.py"].write_text("edited")
    files["q3.py"].unlink()
    deadline = time.monotonic() + 5
    while files["q2.py"].stat().st_ctime_ns <= started and time.monotonic() < deadline:
        files["q2.py"].write_text("test q2.py")  # same text again, but later
    assert grade_labs._tampered_tests(tmp_path, expected, started) == ["q1.py", "q2.py",
                                                                      "q3.py"]
    assert grade_labs._tampered_tests(tmp_path, expected, None) == ["q1.py", "q3.py"]


@pytest.mark.slow
def test_broken_tests_score_zero_with_a_reason(graded):
    assert _scores(graded["empties"]) == [0] * 7
    assert graded["empties"]["reason"].startswith(
        "the notebook changed its test files (q1.py, q2.py, q3.py, q4.py, q5.py, q6.py, q7.py); "
        "grading failed: ")


@pytest.mark.slow
def test_output_past_the_limit_is_discarded_and_grading_goes_on(graded):
    assert _scores(graded["floods"]) == [4] * 7
    assert re.fullmatch(r"output over 5 MB discarded \((5[0-9]|60) MB not kept\)",
                        graded["floods"]["reason"])


@pytest.mark.slow
def test_memory_hog_is_stopped(graded):
    assert _scores(graded["hog"]) == [0] * 7
    assert "over the 1500 MB memory limit" in graded["hog"]["reason"]


@pytest.mark.slow
def test_csv_has_one_row_per_student(graded):
    assert sorted(graded) == ["blank", "crash", "delegating", "deletes", "edits", "empties",
                              "floods", "hog", "solution", "wrong"]
    assert list(next(iter(graded.values()))) == ["student", *QUESTIONS, "total", "reason"]


@pytest.mark.slow
def test_endless_notebooks_are_stopped_with_all_their_processes(stopped):
    rows, pids = stopped
    assert rows["loops"]["reason"] == "stopped after the 25 s time limit (endless loop?)"
    # Endless output: the grader keeps none of it past the limit, but the kernel queues what
    # the grader cannot read fast enough, so the memory limit may stop it before the clock
    # (and before the grader has read past the output limit).
    assert re.fullmatch(r"(stopped after the 25 s time limit \(endless loop\?\)|"
                        r"stopped: used \d+ MB, over the 1500 MB memory limit)"
                        r"(; it had printed \d+ MB past the output limit)?",
                        rows["prints"]["reason"])
    for name in ("loops", "prints"):
        assert _scores(rows[name]) == [0] * 7
        pid = pids[name]  # the kernel that ran the notebook
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert not alive, f"{name}: kernel {pid} still runs"


def test_submission_folder_layouts(tmp_path):
    (tmp_path / "ann.ipynb").write_text("{}")
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "a.ipynb").write_text("{}")
    (tmp_path / "bob" / "b.ipynb").write_text("{}")
    (tmp_path / "cy").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "notes.txt").write_text("")
    found = grade_labs.find_submissions(tmp_path)
    assert [(s, nb and nb.name, problem) for s, nb, problem in found] == [
        ("ann", "ann.ipynb", ""),
        ("bob", None, "2 notebooks in bob/ (expected one)"),
        ("cy", None, "no notebook in cy/"),
    ]
    with pytest.raises(ValueError, match="existing directory"):
        grade_labs.find_submissions(tmp_path / "missing")


@pytest.mark.parametrize("field", ["timeout_s", "max_output_mb", "max_memory_mb", "max_file_mb"])
@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), True, "5"])
def test_limits_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        grade_labs.Limits(**{field: value})


def test_grade_cli_rejects_bad_arguments(tmp_path):
    script = str(REPO / "scripts" / "grade_labs.py")
    for args, message in [
        ([str(tmp_path / "missing"), "--out", "g.csv"], "SUBMISSIONS must be an existing folder"),
        ([str(tmp_path), "--out", str(tmp_path)], "--out must be a file"),
        ([str(tmp_path), "--out", "g.csv", "--timeout", "0"], "must be a number > 0"),
        ([str(tmp_path), "--out", "g.csv", "--jobs", "0"], "must be an integer >= 1"),
    ]:
        done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)


# ---------------------------------------------------------------------------------------------
# The student flow, the way Colab sees it


def _package_copy(dest: Path) -> Path:
    """The package's source, copied (pip builds in the source tree: keep the checkout clean)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copyfile(REPO / name, dest / name)
    shutil.copytree(REPO / "jaxllm", dest / "jaxllm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


RUNNER = """
import sys
import nbformat
from nbclient import NotebookClient

nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=False,
               resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(nb, sys.argv[3])
"""


@pytest.fixture(scope="module")
def student_runs(assigned, tmp_path_factory):
    """Run the blank and the solved student notebook in a fresh virtual environment."""
    base = tmp_path_factory.mktemp("colab")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True)
    python = venv / "bin" / "python"
    runner = base / "run_notebook.py"
    runner.write_text(RUNNER)
    probe = "import jaxllm, sys\nprint('PROBE', sys.executable, jaxllm.__file__)"

    def run(nb: nbformat.NotebookNode, workdir: Path, on_disk: bool, env: dict) -> dict:
        workdir.mkdir()
        nb = copy.deepcopy(nb)
        nb.cells.append(nbformat.v4.new_code_cell(probe))
        source = workdir / f"{LAB}.ipynb" if on_disk else base / f"{workdir.name}-in.ipynb"
        nbformat.write(nb, source)
        before = sorted(p.name for p in workdir.iterdir())
        out = base / f"{workdir.name}-out.ipynb"
        done = subprocess.run([str(python), str(runner), str(source), str(workdir), str(out)],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return {"nb": nbformat.read(out, as_version=4), "before": before}

    offline = {"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0"}
    # 1. The blank notebook alone in an empty folder; its setup cell installs the package.
    blank = run(nbformat.read(LABS / f"{LAB}.ipynb", as_version=4), base / "alone", True,
                {**offline, "JAXLLM_INSTALL_SOURCE": str(_package_copy(base / "pkg"))})
    # 2. Solved, and not even on disk (as in Colab): the tests come from the labs URL.
    solved = run(_solutions_filled_in(assigned), base / "nofile", False,
                 {**offline, "JAXLLM_LABS_URL": LABS.as_uri()})
    return {"blank": blank, "solved": solved, "venv": venv}


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "".join(parts)


def _checks(nb) -> dict[str, str]:
    return {m.group(1): _text(c) for c in nb.cells if c.cell_type == "code"
            for m in [re.fullmatch(r'grader\.check\("(q\d+)"\)', c.source.strip())] if m}


@pytest.mark.slow
def test_student_flow_blank_notebook_alone_in_a_folder(student_runs):
    run = student_runs["blank"]
    nb = run["nb"]
    assert run["before"] == [f"{LAB}.ipynb"]
    setup = _text(nb.cells[lab_template.first_code_cell_index(nb)])
    assert f"Lab {LAB}: public tests for q1, q2, q3, q4, q5, q6, q7 from {LAB}.ipynb." in setup
    # The kernel runs the venv's Python, and jaxllm is the copy the setup cell installed there.
    _, python, package = _text(nb.cells[-1]).split()
    venv = str(student_runs["venv"])
    assert python.startswith(venv) and package.startswith(venv)
    assert package.endswith("site-packages/jaxllm/__init__.py")
    checks = _checks(nb)
    assert sorted(checks) == QUESTIONS
    for q, text in checks.items():
        assert f"{q} results:" in text and "Test case failed" in text, text[:500]
        assert "All test cases passed" not in text


@pytest.mark.slow
def test_student_flow_solved_notebook_passes_public_tests(student_runs):
    nb = student_runs["solved"]["nb"]
    setup = _text(nb.cells[lab_template.first_code_cell_index(nb)])
    assert f"from {LABS.as_uri()}/{LAB}.ipynb." in setup
    checks = _checks(nb)
    assert sorted(checks) == QUESTIONS
    for q, text in checks.items():
        assert f"{q} results: All test cases passed!" in text, text[:500]


# ---------------------------------------------------------------------------------------------
# The preferences lab: generated, graded, and only the student's own code scores

# Answer cells of the preferences lab that delegate to jaxllm.losses: an import, a def wrapper
# that keeps an honest helper beside it, and a lambda.
PREF_DELEGATING = {
    "def preference_probability": '''
from jaxllm.losses import pairwise_reward_loss


def preference_probability(chosen, rejected):
    d = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -d))


def bradley_terry_loss(chosen, rejected):
    return float(pairwise_reward_loss(np.asarray(chosen), np.asarray(rejected)))
''',
    "def sequence_logprob": '''
import jaxllm.losses


def sequence_logprob(token_logps, mask):
    return np.where(np.asarray(mask, bool), np.asarray(token_logps, np.float64), 0.0).sum(-1)


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
             chosen_mask, rejected_mask, beta):
    seqs = [sequence_logprob(x, m) for x, m in [(policy_chosen, chosen_mask),
            (policy_rejected, rejected_mask), (reference_chosen, chosen_mask),
            (reference_rejected, rejected_mask)]]
    return float(jaxllm.losses.dpo_loss(*seqs, beta))
''',
    "def token_kl": '''
from jaxllm import losses


def token_kl(policy_logits, reference_logits):
    def log_softmax(z):
        z = np.asarray(z, np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    logp, logq = log_softmax(policy_logits), log_softmax(reference_logits)
    return (np.exp(logp) * (logp - logq)).sum(axis=-1)


kl_estimate = lambda lp, ref, mask: float(losses.kl_estimate(lp, ref, mask))  # noqa: E731
''',
}


@pytest.fixture(scope="module")
def pref_assigned(tmp_path_factory):
    return assign_labs.assign_lab(LABS / "src" / f"{PREF}.ipynb",
                                  tmp_path_factory.mktemp("pref-dist"))


def _answers_filled_in(assigned, n_answers) -> nbformat.NotebookNode:
    student = nbformat.read(assigned.student_notebook, as_version=4)
    solution = nbformat.read(assigned.solution_notebook, as_version=4)
    filled = copy.deepcopy(student)
    answers = 0
    for cell, solved in zip(filled.cells, solution.cells, strict=True):
        if ANSWER_TAG in cell.metadata.get("tags", []):
            cell.source = solved.source
            answers += 1
    assert answers == n_answers
    return filled


@pytest.fixture(scope="module")
def pref_graded(pref_assigned, tmp_path_factory):
    """Grade the preferences lab: its solution, the blank notebook and a delegating one."""
    folder = tmp_path_factory.mktemp("pref-submissions")
    filled = _answers_filled_in(pref_assigned, len(PREF_QUESTIONS))
    nbformat.write(filled, folder / "solution.ipynb")
    shutil.copyfile(pref_assigned.student_notebook, folder / "blank.ipynb")
    delegating = filled
    for start, source in PREF_DELEGATING.items():
        delegating = _replace_answer(delegating, start, source.strip())
    nbformat.write(delegating, folder / "delegating.ipynb")
    rows, text = _grade_cli(folder, pref_assigned.autograder_zip, folder / "grades.csv",
                            "--timeout", "300", "--jobs", "2")
    print(f"\n{text}")
    return rows


def test_preferences_regenerating_changes_nothing_committed(pref_assigned):
    committed = LABS / f"{PREF}.ipynb"
    assert committed.read_bytes() == pref_assigned.student_notebook.read_bytes(), (
        "labs/ is stale: run python scripts/assign_labs.py")


def test_preferences_questions_have_public_and_hidden_tests(pref_assigned):
    _, questions = grade_labs.read_questions(pref_assigned.autograder_zip)
    assert [q.name for q in questions] == PREF_QUESTIONS
    for q in questions:
        hidden = list(q.hidden.values())
        assert any(hidden) and not all(hidden), q.name
        assert q.possible == len(hidden) == 4


def _pref_scores(row) -> list[float]:
    return [float(row[q]) for q in PREF_QUESTIONS]


@pytest.mark.slow
def test_preferences_solution_scores_full_marks(pref_graded):
    row = pref_graded["solution"]
    assert _pref_scores(row) == [4, 4, 4] and float(row["total"]) == 12
    assert row["reason"] == ""


@pytest.mark.slow
def test_preferences_blank_notebook_scores_zero(pref_graded):
    row = pref_graded["blank"]
    assert _pref_scores(row) == [0, 0, 0] and float(row["total"]) == 0
    assert row["reason"].split("; ") == [f"q{i} 0/4: all tests failed" for i in (1, 2, 3)]


@pytest.mark.slow
def test_preferences_delegating_scores_zero_on_those_questions(pref_graded):
    row = pref_graded["delegating"]
    assert _pref_scores(row) == [0, 0, 0] and float(row["total"]) == 0
    reasons = row["reason"].split("; ")
    assert len(reasons) == 3, reasons
    for q, reason in zip(PREF_QUESTIONS, reasons, strict=True):
        assert reason.startswith(f"{q} 0/4: not your own code: "), reason
    assert "jaxllm.losses.pairwise_reward_loss" in reasons[0], reasons[0]
    assert "jaxllm.losses" in reasons[1] and "jaxllm.losses" in reasons[2]


# ---------------------------------------------------------------------------------------------
# The second lab, counting-parameters (chapter 11.1): generated, public and hidden tests, and
# the grading round trip (solution full marks, blank zero, delegation zero on its questions)

# q3 is answered honestly: there is no package function of 6ND to delegate to.
DELEGATING2 = {
    "def gpt2_params": '''
from jaxllm.model import count_params


def gpt2_params(vocab_size, context_length, n_layer, d_model):
    return count_params(ModelConfig(vocab_size=vocab_size, context_length=context_length,
                                    n_layer=n_layer, n_head=1, d_model=d_model))
''',
    "def count_params_by_hand": "from jaxllm.model import count_params as count_params_by_hand",
    "def perplexity": '''
from jaxllm.train import TextScore


def perplexity(loss):
    return TextScore(tokens=1, nats=loss, characters=1, bytes=1).perplexity


def bits_per_character(loss, n_tokens, n_characters):
    return TextScore(n_tokens, loss * n_tokens, n_characters, n_characters).bits_per_character
''',
}


@pytest.fixture(scope="module")
def assigned2(tmp_path_factory):
    return assign_labs.assign_lab(LABS / "src" / f"{LAB2}.ipynb",
                                  tmp_path_factory.mktemp("dist2"))


@pytest.fixture(scope="module")
def graded2(assigned2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions2")
    student = nbformat.read(assigned2.student_notebook, as_version=4)
    solution = nbformat.read(assigned2.solution_notebook, as_version=4)
    filled = copy.deepcopy(student)
    for cell, solved in zip(filled.cells, solution.cells, strict=True):
        if ANSWER_TAG in cell.metadata.get("tags", []):
            cell.source = solved.source
    nbformat.write(filled, folder / "solution.ipynb")
    shutil.copyfile(assigned2.student_notebook, folder / "blank.ipynb")
    delegating = filled
    for start, source in DELEGATING2.items():
        delegating = _replace_answer(delegating, start, source.strip())
    nbformat.write(delegating, folder / "delegating.ipynb")
    rows, text = _grade_cli(folder, assigned2.autograder_zip, folder / "grades.csv",
                            "--timeout", "300", "--max-memory-mb", "2000", "--jobs", "2")
    print(f"\n{text}")
    return rows


def test_counting_lab_regenerates_unchanged_and_hides_its_solutions(assigned2):
    committed = LABS / f"{LAB2}.ipynb"
    assert committed.read_bytes() == assigned2.student_notebook.read_bytes(), (
        "labs/ is stale: run python scripts/assign_labs.py")
    student_text = committed.read_text(encoding="utf-8")
    for cell in _source_cells("solution", LAB2):
        inside = cell.source.split("# BEGIN SOLUTION")[1:]
        lines = {ln.strip() for part in inside for ln in part.split("# END SOLUTION")[0]
                 .splitlines() if len(ln.strip()) >= 12}
        assert lines and not [ln for ln in lines if json.dumps(ln)[1:-1] in student_text]
    for cell in _source_cells("tests", LAB2):
        if _test_config(cell)["hidden"]:
            assert _test_function(cell).name not in student_text


def test_counting_lab_questions_have_public_and_hidden_tests(assigned2):
    _, questions = grade_labs.read_questions(assigned2.autograder_zip)
    assert [q.name for q in questions] == QUESTIONS2
    for q in questions:
        hidden = list(q.hidden.values())
        assert any(hidden) and not all(hidden) and q.possible == len(hidden) == 4, q.name


@pytest.mark.slow
def test_counting_lab_solution_full_marks_blank_zero(graded2):
    assert [float(graded2["solution"][q]) for q in QUESTIONS2] == [4] * 4
    assert graded2["solution"]["reason"] == ""
    blank = graded2["blank"]
    assert [float(blank[q]) for q in QUESTIONS2] == [0] * 4 and float(blank["total"]) == 0
    assert blank["reason"].split("; ") == [f"{q} 0/4: all tests failed" for q in QUESTIONS2]


@pytest.mark.slow
def test_counting_lab_delegating_answers_score_zero(graded2):
    row = graded2["delegating"]
    assert [float(row[q]) for q in QUESTIONS2] == [0, 0, 4, 0] and float(row["total"]) == 4
    reasons = row["reason"].split("; ")
    assert [r.split(" ")[0] for r in reasons] == ["q1", "q2", "q4"], reasons
    assert all("not your own code:" in r for r in reasons), reasons
    assert "jaxllm.model.count_params" in reasons[1], reasons[1]


# ---------------------------------------------------------------------------------------------
# The "training and scaling" lab (11.3): the same round trip, on its three questions


LAB3 = "training-and-scaling"
QUESTIONS3 = ["q1", "q2", "q3"]
ANSWER_VALUES3 = {"k_sweep", "loss_at_1m"}  # numbers the q3 tests read, not functions
# Delegated answers: q1 imports jaxllm's cross-entropy, q2 is answered honestly, q3 fits with
# np.polyfit (a library's least squares, which the question asks the student to write).
DELEGATING3 = {
    "def cross_entropy": '''
from jaxllm.losses import cross_entropy as _ce


def cross_entropy(logits, targets):
    return float(_ce(np.asarray(logits), np.asarray(targets)))
''',
    "def fit_power_law": '''
def fit_power_law(n, loss):
    slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
    return float(np.exp(intercept)), float(-slope)


def predict(a, k, n):
    return a * np.asarray(n, dtype=np.float64) ** (-k)


k_sweep = fit_power_law(sizes, losses)[1]
loss_at_1m = float(predict(*fit_power_law(sizes, losses), 1e6))
''',
}


@pytest.fixture(scope="module")
def assigned3(tmp_path_factory):
    return assign_labs.assign_lab(LABS / "src" / f"{LAB3}.ipynb",
                                  tmp_path_factory.mktemp("dist3"))


def _filled(assigned) -> nbformat.NotebookNode:
    student = nbformat.read(assigned.student_notebook, as_version=4)
    solution = nbformat.read(assigned.solution_notebook, as_version=4)
    filled = copy.deepcopy(student)
    for cell, solved in zip(filled.cells, solution.cells, strict=True):
        if ANSWER_TAG in cell.metadata.get("tags", []):
            cell.source = solved.source
    return filled


@pytest.fixture(scope="module")
def graded3(assigned3, tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions3")
    filled = _filled(assigned3)
    nbformat.write(filled, folder / "solution.ipynb")
    shutil.copyfile(assigned3.student_notebook, folder / "blank.ipynb")
    delegating = filled
    for start, source in DELEGATING3.items():
        delegating = _replace_answer(delegating, start, source.strip())
    nbformat.write(delegating, folder / "delegating.ipynb")
    rows, _ = _grade_cli(folder, assigned3.autograder_zip, folder / "grades.csv",
                         "--timeout", "300", "--jobs", "2")
    return rows


def test_scaling_lab_regenerating_changes_nothing_committed(assigned3):
    assert (LABS / f"{LAB3}.ipynb").read_bytes() == assigned3.student_notebook.read_bytes(), (
        "labs/ is stale: run python scripts/assign_labs.py")


def test_scaling_lab_questions_have_public_and_hidden_tests_that_check_own_code(assigned3):
    _, questions = grade_labs.read_questions(assigned3.autograder_zip)
    assert [q.name for q in questions] == QUESTIONS3
    for q in questions:
        hidden = list(q.hidden.values())
        assert hidden.count(True) == 2 and hidden.count(False) == 2 and q.possible == 4
    source = nbformat.read(LABS / "src" / f"{LAB3}.ipynb", as_version=4)
    tests = [c for c in source.cells if c.cell_type == "code" and "# BEGIN TEST CONFIG" in c.source]
    assert len(tests) == 12
    for cell in tests:
        function = _test_function(cell)
        body = [ast.unparse(s) for s in function.body]
        assert body[0] == "from jaxllm import labcheck"
        assert body[1].startswith("reference_modules = labcheck.modules_of(")
        functions = [a.arg for a in function.args.args if a.arg not in ANSWER_VALUES3]
        assert len(body) > len(functions) + 2
        for param, statement in zip(functions, body[2:], strict=False):
            assert statement == f"{param} = labcheck.own_code({param}, *reference_modules)"
    student = (LABS / f"{LAB3}.ipynb").read_text(encoding="utf-8")
    assert "take_along_axis" not in student and "np.cos(np.pi * progress)" not in student
    assert "NBVAL_CHECK_OUTPUT" not in student and "test_q1_huge_logits" not in student


@pytest.mark.slow
def test_scaling_lab_solution_full_marks_blank_zero_delegation_zero(graded3):
    assert [float(graded3["solution"][q]) for q in QUESTIONS3] == [4, 4, 4]
    assert graded3["solution"]["reason"] == ""
    blank = graded3["blank"]
    assert [float(blank[q]) for q in QUESTIONS3] == [0, 0, 0]
    assert blank["reason"].split("; ") == [f"q{i} 0/4: all tests failed" for i in (1, 2, 3)]
    row = graded3["delegating"]
    assert [float(row[q]) for q in QUESTIONS3] == [0, 4, 0], row
    reasons = row["reason"].split("; ")
    assert reasons[0].startswith("q1 0/4: not your own code: ") and "jaxllm.losses" in reasons[0]
    assert reasons[1].startswith("q3 0/4: not your own code: ") and "polyfit" in reasons[1]


# ---------------------------------------------------------------------------------------------
# The API lab (11.6): requests, streams and costs, checked against jaxllm serve; only the
# student's own code scores (jaxllm.serve and, in q2, the openai client's stream accumulator
# are banned)

API = "calling-an-api"
API_QUESTIONS = ["q1", "q2", "q3"]
# The parameters of its tests that are not graded: the notebook's model and tokenizer, from
# which the tests start a server of their own.
API_CONTEXT = ("model", "tokenizer")
API_BANNED = {"q1": "serve", "q2": "serve, _completions", "q3": "serve"}

# Answer cells that let others do the work: a check through the server's own code (q1), the
# openai client's accumulator (q2, which would pass every test without the check), and a
# getattr detour into jaxllm.serve that only the run-time check sees (q3).
API_DELEGATING = {
    "def chat_request": '''
from jaxllm import serve


def chat_request(model, user, system=None, temperature=1.0, max_tokens=64):
    assert serve._is_number(temperature) and serve._is_int(max_tokens)
    messages = [{"role": "system", "content": system}] if system else []
    return {"model": model, "messages": [*messages, {"role": "user", "content": user}],
            "temperature": float(temperature), "max_tokens": int(max_tokens)}
''',
    "def assemble_stream": '''
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk


def assemble_stream(chunks):
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    usage = final.usage.model_dump(exclude_none=True) if final.usage else None
    return final.choices[0].message.content or "", final.choices[0].finish_reason, usage
''',
    "def request_cost": '''
import importlib


def request_cost(usage, price_in, price_out):
    check = getattr(importlib.import_module("jaxllm." + "serve"), "_is_" + "number")
    assert check(price_in) and check(price_out)
    n_in = usage.get("prompt_tokens", usage.get("input_tokens"))
    n_out = usage.get("completion_tokens", usage.get("output_tokens"))
    return (n_in * price_in + n_out * price_out) / 1e6


def total_cost(usages, price_in, price_out):
    return sum(request_cost(u, price_in, price_out) for u in usages)
''',
}


@pytest.fixture(scope="module")
def api_assigned(tmp_path_factory):
    return assign_labs.assign_lab(LABS / "src" / f"{API}.ipynb",
                                  tmp_path_factory.mktemp("api-dist"))


@pytest.fixture(scope="module")
def api_graded(api_assigned, tmp_path_factory):
    """Grade the API lab: its solution, the blank notebook and a delegating one."""
    folder = tmp_path_factory.mktemp("api-submissions")
    filled = _answers_filled_in(api_assigned, len(API_QUESTIONS))
    nbformat.write(filled, folder / "solution.ipynb")
    shutil.copyfile(api_assigned.student_notebook, folder / "blank.ipynb")
    delegating = filled
    for start, source in API_DELEGATING.items():
        delegating = _replace_answer(delegating, start, source.strip())
    nbformat.write(delegating, folder / "delegating.ipynb")
    start = time.monotonic()
    rows, text = _grade_cli(folder, api_assigned.autograder_zip, folder / "grades.csv",
                            "--timeout", "600", "--jobs", "2")
    print(f"\ngraded {len(rows)} notebooks in {time.monotonic() - start:.1f} s:\n{text}")
    return rows


def test_calling_an_api_regenerating_changes_nothing_committed(api_assigned):
    committed = LABS / f"{API}.ipynb"
    assert committed.read_bytes() == api_assigned.student_notebook.read_bytes(), (
        "labs/ is stale: run python scripts/assign_labs.py")


def test_calling_an_api_questions_have_public_and_hidden_tests(api_assigned):
    _, questions = grade_labs.read_questions(api_assigned.autograder_zip)
    assert [q.name for q in questions] == API_QUESTIONS
    for q in questions:
        hidden = list(q.hidden.values())
        assert any(hidden) and not all(hidden), q.name
        assert q.possible == len(hidden) == 4


def test_calling_an_api_tests_check_first_that_the_functions_are_the_students_own():
    """As for the other labs: each test starts by passing every function it grades through
    ``labcheck.own_code`` with the banned modules of its question; its other parameters are
    only the notebook's model and tokenizer (never rebound)."""
    nb = nbformat.read(LABS / "src" / f"{API}.ipynb", as_version=4)
    question, seen = None, {}
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.startswith("# BEGIN QUESTION"):
            question = re.search(r"name: (q\d+)", cell.source).group(1)
        if cell.cell_type != "code" or "# BEGIN TEST CONFIG" not in cell.source:
            continue
        function = _test_function(cell)
        params = [a.arg for a in function.args.args]
        graded = [p for p in params if p not in API_CONTEXT]
        assert graded and params == graded + [p for p in API_CONTEXT if p in params], params
        body = [ast.unparse(s) for s in function.body]
        assert body[0] == "from jaxllm import labcheck, serve", function.name
        checks = [s for s in body[1:] if not s.startswith(("from ", "import "))][:len(graded)]
        assert checks == [f"{p} = labcheck.own_code({p}, {API_BANNED[question]})"
                          for p in graded], function.name
        if "_completions" in API_BANNED[question]:
            assert "from openai.lib.streaming.chat import _completions" in body[:3]
        rebound = {n.id for n in ast.walk(function)
                   if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        assert not rebound & set(API_CONTEXT), function.name
        seen[question] = seen.get(question, 0) + 1
    assert seen == {q: 4 for q in API_QUESTIONS}


def _api_scores(row) -> list[float]:
    return [float(row[q]) for q in API_QUESTIONS]


@pytest.mark.slow
def test_calling_an_api_solution_scores_full_marks(api_graded):
    row = api_graded["solution"]
    assert _api_scores(row) == [4, 4, 4] and float(row["total"]) == 12
    assert row["reason"] == ""


@pytest.mark.slow
def test_calling_an_api_blank_notebook_scores_zero(api_graded):
    row = api_graded["blank"]
    assert _api_scores(row) == [0, 0, 0] and float(row["total"]) == 0
    assert row["reason"].split("; ") == [f"q{i} 0/4: all tests failed" for i in (1, 2, 3)]


@pytest.mark.slow
def test_calling_an_api_delegating_scores_zero_on_those_questions(api_graded):
    row = api_graded["delegating"]
    assert _api_scores(row) == [0, 0, 0] and float(row["total"]) == 0
    reasons = row["reason"].split("; ")
    assert len(reasons) == 3, reasons
    for q, reason in zip(API_QUESTIONS, reasons, strict=True):
        assert reason.startswith(f"{q} 0/4: not your own code: "), reason
    assert "uses the module serve (jaxllm.serve)" in reasons[0], reasons[0]
    assert "openai.lib.streaming.chat._completions.ChatCompletionStreamState" in reasons[1], (
        reasons[1])
    assert "calls jaxllm.serve._is_number" in reasons[2], reasons[2]
