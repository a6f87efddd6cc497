"""Chapter notebooks keep exercise solutions out of plain view.

On the website a solution is a ``{solution}`` dropdown. Someone who opens the notebook in
Colab or Jupyter sees a Markdown cell as text, dropdown or not, so the dropdown's body must be
nothing but an ``{include}`` of ``chapters/solutions/<notebook-stem>.md`` between two HTML
comment markers; the answer itself lives in that file. This test reads the notebooks' JSON
(no Jupyter, no build) and fails on any solution whose body is anything else, or whose include
names a missing file or markers that the file does not hold.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "chapters").glob("*.ipynb"))

# An opening fence (``` or ::: of any length >= 3) of a {solution} directive, and its closing.
OPEN = re.compile(r"^(?P<fence>`{3,}|:{3,})\{solution\}(?P<arg>.*)$")
INCLUDE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{include\}\s+(?P<path>\S+)\s*$")


def solution_problems(markdown: str, base: Path) -> list[str]:
    """What is wrong with the ``{solution}`` directives of one Markdown cell (empty: fine).

    ``base`` is the folder the include paths are relative to (the notebook's folder); the
    included file must be in its ``solutions/`` folder.
    """
    problems = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = OPEN.match(lines[i].strip())
        if not m:
            if "{solution}" in lines[i]:
                problems.append(f"line {i + 1}: a {{solution}} that is not a fenced directive "
                                f"of its own line: {lines[i]!r}")
            i += 1
            continue
        fence, label = m["fence"], m["arg"].strip() or "(no label)"
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        if end is None:
            problems.append(f"solution {label}: its fence {fence!r} is never closed")
            break
        body = lines[i + 1:end]
        while body and (body[0].startswith(":") and not body[0].startswith(":::")):
            body.pop(0)  # the directive's options (:class: dropdown)
        body = [ln for ln in body if ln.strip()]
        problems += _include_problems(label, body, base)
        i = end + 1
    return problems


def _include_problems(label: str, body: list[str], base: Path) -> list[str]:
    where = f"solution {label}"
    inc = INCLUDE.match(body[0].strip()) if body else None
    if inc is None:
        return [f"{where}: its body must be only an {{include}} of chapters/solutions/..., "
                f"got {body[:2]!r}"]
    inner = inc["fence"]
    options = {}
    rest = body[1:]
    while rest and rest[0].startswith(":"):
        name, _, value = rest.pop(0)[1:].partition(":")
        options[name.strip()] = value.strip()
    if rest != [inner]:
        return [f"{where}: the include must close with {inner!r} and nothing may follow it, "
                f"got {rest!r}"]
    path = (base / inc["path"]).resolve()
    if not path.is_relative_to((base / "solutions").resolve()):
        return [f"{where}: includes {inc['path']!r}, which is not under chapters/solutions/"]
    if not path.is_file():
        return [f"{where}: includes {inc['path']!r}, which does not exist"]
    start, stop = options.get("start-after"), options.get("end-before")
    if not start or not stop:
        return [f"{where}: the include needs :start-after: and :end-before: markers, got "
                f"{sorted(options)}"]
    text = path.read_text(encoding="utf-8")
    if text.count(start) != 1 or text.count(stop) != 1:
        return [f"{where}: {inc['path']} must hold {start!r} and {stop!r} exactly once each "
                f"(found {text.count(start)} and {text.count(stop)})"]
    a, b = text.index(start) + len(start), text.index(stop)
    if b <= a or not text[a:b].strip():
        return [f"{where}: no solution text between {start!r} and {stop!r} in "
                f"{inc['path']}"]
    return []


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_solutions_are_includes_of_separate_files(notebook):
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    problems = []
    for n, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"])
        if "{solution}" not in source:
            continue
        if cell["cell_type"] != "markdown":
            problems.append(f"cell {n}: a {{solution}} in a {cell['cell_type']} cell")
            continue
        problems += [f"cell {n}: {p}" for p in solution_problems(source, notebook.parent)]
    assert not problems, "\n".join(problems)


GOOD = """```{{exercise}}
:label: ex-a

Question?
```

````{{solution}} ex-a
:class: dropdown

```{{include}} {path}
:start-after: <!-- ex-a -->
:end-before: <!-- end ex-a -->
```
````
"""


@pytest.fixture()
def solutions(tmp_path):
    """A chapters folder whose solutions/x.md holds the answer to ex-a."""
    folder = tmp_path / "chapters" / "solutions"
    folder.mkdir(parents=True)
    (folder / "x.md").write_text("<!-- ex-a -->\nThe answer.\n<!-- end ex-a -->\n")
    return tmp_path / "chapters"


def test_checker_accepts_an_include_and_rejects_plain_text_and_bad_includes(solutions):
    assert solution_problems(GOOD.format(path="solutions/x.md"), solutions) == []
    plain = "```{solution} ex-a\n:class: dropdown\n\nThe answer, in plain view.\n```\n"
    assert "must be only an {include}" in solution_problems(plain, solutions)[0]
    assert "does not exist" in solution_problems(GOOD.format(path="solutions/y.md"),
                                                 solutions)[0]
    other = GOOD.format(path="solutions/x.md").replace("<!-- end ex-a -->", "<!-- end ex-b -->")
    assert "exactly once" in solution_problems(other, solutions)[0]
    extra = GOOD.format(path="solutions/x.md").replace("```\n````", "```\nAnd a hint.\n````")
    assert "nothing may follow" in solution_problems(extra, solutions)[0]
    (solutions / "solutions" / "x.md").write_text("<!-- ex-a -->\n<!-- end ex-a -->\n")
    assert "no solution text" in solution_problems(GOOD.format(path="solutions/x.md"),
                                                   solutions)[0]
    outside = GOOD.format(path="../x.md")
    (solutions.parent / "x.md").write_text("<!-- ex-a -->\nA.\n<!-- end ex-a -->\n")
    assert "not under chapters/solutions" in solution_problems(outside, solutions)[0]
