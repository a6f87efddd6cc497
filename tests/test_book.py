"""Sanity of the book's sources: configuration, table of contents, citations, notebooks.

Fast checks that need no build; the built site itself is checked by tests/test_site.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml
from pybtex.database import parse_file

REPO = Path(__file__).resolve().parents[1]
CONFIG_TEXT = (REPO / "_config.yml").read_text(encoding="utf-8")
CONFIG = yaml.safe_load(CONFIG_TEXT)
TOC = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
CHAPTERS = sorted((REPO / "chapters").glob("*.ipynb"))
EXPECTED_CHAPTERS = [
    "11-1-what-are-llms",
    "11-2-how-llms-work",
    "11-3-training-llms",
    "11-4-rlhf-and-alignment",
    "11-5-prompt-engineering",
    "11-6-using-llm-apis",
    "11-7-limitations-and-risks",
    "11-8-llms-in-research",
]
SKIP_DIRS = {"_build", "node_modules", ".git", ".ipynb_checkpoints", ".pytest_cache"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _toc_files(node: object) -> list[str]:
    """Every `file:` entry of the table of contents (root included), in order."""
    found: list[str] = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if key in node:
                found.append(node[key])
        for value in node.values():
            if isinstance(value, list | dict):
                found += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            found += _toc_files(item)
    return found


TOC_FILES = _toc_files(TOC)


def _resolve(entry: str) -> Path | None:
    for suffix in ("", ".md", ".ipynb"):
        path = REPO / f"{entry}{suffix}"
        if path.is_file() and path.suffix in {".md", ".ipynb"}:
            return path
    return None


def _book_sources() -> list[Path]:
    """Markdown and notebook files of the repository (outside build and package folders)."""
    return sorted(
        p
        for p in REPO.rglob("*")
        if p.suffix in {".md", ".ipynb"} and not SKIP_DIRS.intersection(p.relative_to(REPO).parts)
    )


def _text_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
        return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return path.read_text(encoding="utf-8")


def test_toc_entries_exist_once():
    assert TOC["format"] == "jb-book"
    missing = [e for e in TOC_FILES if _resolve(e) is None]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"
    duplicates = {e for e in TOC_FILES if TOC_FILES.count(e) > 1}
    assert not duplicates, f"_toc.yml lists these more than once: {duplicates}"


def test_chapters_are_the_eight_sections_in_order():
    assert [p.stem for p in CHAPTERS] == EXPECTED_CHAPTERS
    in_toc = [e.removesuffix(".ipynb") for e in TOC_FILES if e.startswith("chapters/")]
    assert in_toc == [f"chapters/{name}" for name in EXPECTED_CHAPTERS]


def test_every_page_source_is_in_the_toc():
    """Pages outside the toc would silently be left out (only_build_toc_files: true)."""
    listed = {_resolve(e) for e in TOC_FILES}
    pages = [p for p in (REPO / "chapters").glob("*") if p.suffix in {".md", ".ipynb"}]
    pages += [p for p in (REPO / "labs").glob("*") if p.suffix in {".md", ".ipynb"}]
    assert [p for p in pages if p not in listed] == []
    for required in ("intro", "instructors", "bibliography", "labs/index"):
        assert _resolve(required) in listed, required


def test_config_builds_from_committed_outputs_with_colab_launch():
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    assert CONFIG["only_build_toc_files"] is True
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["html"]["use_repository_button"] is True
    assert CONFIG["bibtex_bibfiles"] == ["references.bib"]
    extensions = CONFIG["sphinx"]["config"]["extensions"]
    for ext in ("sphinx_exercise", "sphinxcontrib.bibtex", "offline_assets", "myst_nb"):
        assert ext in extensions, ext
    excluded = set(CONFIG["exclude_patterns"])
    for pattern in ("labs/src/**", "README.md", "tests/**", "benchmarks/**", "jaxllm/**", "_build"):
        assert pattern in excluded, pattern


def test_repository_is_named_once():
    url = CONFIG["repository"]["url"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    assert CONFIG["repository"]["branch"]
    assert CONFIG_TEXT.count(url) == 1
    assert CONFIG_TEXT.count("github.com") == 1


def test_browser_assets_are_served_locally():
    """MathJax and the widget manager must come from _static/vendor, never from a CDN."""
    sphinx = CONFIG["sphinx"]["config"]
    local = [sphinx["mathjax_path"], *sphinx["nb_ipywidgets_js"]]
    assert all("://" not in p and p.startswith("vendor/") for p in local), local
    manifest = json.loads((REPO / "_ext" / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((REPO / "_ext" / "package-lock.json").read_text(encoding="utf-8"))
    for package, version in manifest["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{package} must be pinned: {version}"
        assert lock["packages"][f"node_modules/{package}"]["version"] == version, package


BIB = parse_file(REPO / "references.bib")


@pytest.mark.parametrize("key", sorted(BIB.entries), ids=str)
def test_bib_entry_has_doi_or_arxiv_id(key: str):
    fields = {k.lower(): v for k, v in BIB.entries[key].fields.items()}
    assert fields.get("title") and fields.get("year"), key
    assert BIB.entries[key].persons.get("author"), f"{key} has no author"
    if "doi" in fields:
        assert re.fullmatch(r"10\.\d{4,9}/\S+", fields["doi"]), fields["doi"]
    elif "eprint" in fields:
        assert re.fullmatch(r"\d{4}\.\d{4,5}", fields["eprint"]), fields["eprint"]
        assert fields.get("archiveprefix", "").lower() == "arxiv", key
    else:
        # Works with neither (a technical report, software) say so, and give a URL.
        assert fields.get("url", "").startswith("https://"), f"{key}: no doi, eprint or url"
        assert re.search(r"no DOI", fields.get("note", ""), flags=re.IGNORECASE), (
            f"{key}: no doi or eprint, and no note saying why"
        )


CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")


def test_every_cited_key_is_in_references_bib():
    cited: dict[str, list[str]] = {}
    for path in _book_sources():
        for match in CITE.finditer(_text_of(path)):
            for key in match.group(1).split(","):
                cited.setdefault(key.strip(), []).append(str(path.relative_to(REPO)))
    assert cited, "no {cite} roles found at all"
    unknown = {k: v for k, v in cited.items() if k not in BIB.entries}
    assert not unknown, f"cited but not in references.bib: {unknown}"


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_notebook_is_executed_and_checkable(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), (
        "the first cell must be the title"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code if c.source.strip()]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: outputs must come from one run top to bottom "
        f"(scripts/execute_notebooks.py); execution counts are {counts}"
    )
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} has stored errors"
    checked = [c for c in code if c.source.lstrip().startswith("# NBVAL_CHECK_OUTPUT")]
    assert checked, f"{path.name}: no cell marked # NBVAL_CHECK_OUTPUT"
    assert all(c.outputs for c in checked), f"{path.name}: a checked cell has no output"


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_displayed_widgets_have_saved_state(path: Path):
    """A widget view without saved state would render as nothing on the website."""
    nb = nbformat.read(path, as_version=4)
    views = [
        o["data"][WIDGET_VIEW]["model_id"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type in {"display_data", "execute_result"} and WIDGET_VIEW in o.get("data", {})
    ]
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    missing = [m for m in views if m not in state]
    assert not missing, f"{path.name}: widget views without saved state {missing}"
