"""The built website, opened in a real browser (Debian's chromium, driven by Playwright).

Build first (``jupyter-book build . -W -n --keep-going``), then run::

    python -m pytest tests/test_site.py -m browser

The site in ``_build/html`` is served by ``http.server`` on 127.0.0.1 (a free port); every
request to any other host is blocked and fails the test, so pages must be complete offline
(MathJax and the widget manager are served from ``_static/vendor``). Every HTML page of the
site is checked: status, title, no JavaScript errors, images loaded, equations typeset, saved
widgets rendered, Colab links pointing at notebooks that exist in the repository. The search
page must find each chapter by a word from its text. Screenshots of the intro and of one
chapter are written to ``_build/screenshots/`` (not committed) for a human to look at.

Set ``CHROMIUM_PATH`` to use a browser other than ``/usr/bin/chromium``.
"""

from __future__ import annotations

import functools
import html
import os
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

import nbformat
import pytest
import yaml

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "_build" / "html"
SCREENSHOTS = REPO / "_build" / "screenshots"
CONFIG = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
BOOK_TITLE = CONFIG["title"]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000

# Console errors that are not failures of the site. Keep this list short, and say why.
# (Empty: the book has a favicon, so Chromium does not log a 404 for /favicon.ico.)
CONSOLE_ALLOW: list[re.Pattern[str]] = []
# Local paths that may answer 404.
ALLOWED_404: set[str] = set()
# Hosts other than 127.0.0.1 that pages may contact. Empty: every page works offline.
ALLOWED_HOSTS: set[str] = set()


def _site_pages() -> list[str]:
    """Every HTML page of the built site, as paths relative to its root."""
    if not SITE.is_dir():
        return []
    return sorted(
        p.relative_to(SITE).as_posix()
        for p in SITE.rglob("*.html")
        if not p.relative_to(SITE).parts[0].startswith(("_static", "_sources", "_images"))
    )


PAGES = _site_pages()


def _source_of(page: str) -> Path | None:
    """The repository file a page was built from (None for generated pages)."""
    stem = page.removesuffix(".html")
    for suffix in (".ipynb", ".md"):
        candidate = REPO / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _first_heading(source: Path) -> str:
    if source.suffix == ".ipynb":
        nb = nbformat.read(source, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    else:
        text = source.read_text(encoding="utf-8")
    match = re.search(r"^# (.+)$", text, flags=re.MULTILINE)
    if match is None:
        raise AssertionError(f"{source} has no level-1 heading")
    return re.sub(r"[`*_]", "", match.group(1)).strip()


def _colab_url(source: Path) -> str:
    url = CONFIG["repository"]["url"].rstrip("/")
    org_repo = url.removeprefix("https://github.com/")
    branch = CONFIG["repository"]["branch"]
    rel = source.relative_to(REPO).as_posix()
    return f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{rel}"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def site_url() -> Iterator[str]:
    if not (SITE / "intro.html").is_file():
        pytest.fail(f"no built site in {SITE}: run `jupyter-book build . -W -n --keep-going`")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"no browser at {CHROMIUM}: install Debian's chromium (`apt-get install -y chromium`) "
            "or set CHROMIUM_PATH"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class PageLog:
    """What a page did while loading: console errors, exceptions, failed and foreign requests."""

    def __init__(self) -> None:
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.failed: list[str] = []
        self.foreign: list[str] = []

    def problems(self) -> list[str]:
        errors = [e for e in self.console_errors if not any(p.search(e) for p in CONSOLE_ALLOW)]
        return (
            [f"console error: {e}" for e in errors]
            + [f"page error: {e}" for e in self.page_errors]
            + [f"failed request: {e}" for e in self.failed]
            + [f"request leaving 127.0.0.1 (blocked): {e}" for e in self.foreign]
        )


@pytest.fixture
def open_page(browser, site_url):
    """Open a path of the site in a fresh context; returns (page, response, log)."""
    contexts = []

    def _open(path: str):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        log = PageLog()

        def route(route):
            url = route.request.url
            host = urlsplit(url).hostname
            if url.startswith(site_url + "/") or host in ALLOWED_HOSTS:
                route.continue_()
            else:
                log.foreign.append(url)
                route.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on(
            "console", lambda m: log.console_errors.append(m.text) if m.type == "error" else None
        )
        page.on("pageerror", lambda e: log.page_errors.append(str(e)))

        def on_response(response):
            path = urlsplit(response.url).path
            if response.status >= 400 and path not in ALLOWED_404:
                log.failed.append(f"{response.status} {response.url}")

        page.on("response", on_response)
        page.on(
            "requestfailed",
            lambda r: None
            if r.url in log.foreign
            else log.failed.append(f"{r.url} ({r.failure})"),
        )
        response = page.goto(f"{site_url}/{path}", wait_until="load")
        return page, response, log

    yield _open
    for context in contexts:
        context.close()


def test_site_has_pages():
    assert "intro.html" in PAGES, f"no built site in {SITE} (run the book build first)"
    assert any(p.startswith("chapters/") for p in PAGES), PAGES


@pytest.mark.parametrize("path", PAGES or ["<no site built>"])
def test_page(open_page, path: str) -> None:
    if path == "<no site built>":
        pytest.fail(f"no built site in {SITE}: run `jupyter-book build . -W -n --keep-going`")
    page, response, log = open_page(path)
    status = response.status if response is not None else None
    assert status == 200, f"{path}: HTTP {status}"

    raw = (SITE / path).read_text(encoding="utf-8")
    if re.search(r'<meta http-equiv="Refresh"', raw, flags=re.IGNORECASE):
        # The root index.html only forwards to the landing page.
        page.wait_for_url(re.compile(r".*/intro\.html$"))
        assert page.title().endswith(BOOK_TITLE)
        assert not log.problems(), log.problems()
        return

    # Title: "<first heading of the source> — <book title>" (generated pages: "<x> - <book>").
    source = _source_of(path)
    title = page.title()
    if source is not None:
        assert title == f"{_first_heading(source)} \u2014 {BOOK_TITLE}", title
    else:
        assert title.endswith(BOOK_TITLE) and len(title) > len(BOOK_TITLE) + 3, title

    # Images: scrolled into view (nothing lazy stays unloaded), decoded, non-empty.
    images = page.evaluate(
        """async () => {
            const imgs = Array.from(document.images);
            for (const img of imgs) { img.loading = "eager"; img.scrollIntoView(); }
            await Promise.all(imgs.map(i => i.decode().catch(() => null)));
            return imgs.map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0}));
        }"""
    )
    broken = [i["src"] for i in images if not i["ok"]]
    assert not broken, f"{path}: images that did not load: {broken}"

    # Equations: every math element typeset by MathJax, without TeX errors.
    n_math = page.locator(".math").count()
    if n_math:
        page.wait_for_function(
            """() => Array.from(document.querySelectorAll('.math'))
                        .every(m => m.querySelector('mjx-container'))""",
            timeout=TIMEOUT_MS,
        )
        assert page.locator("mjx-merror").count() == 0, f"{path}: MathJax reports a TeX error"

    # Saved widgets: the embed manager replaced each view script with a visible widget.
    n_views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
    if n_views:
        page.wait_for_function(
            f"""() => document.querySelectorAll('.widget-subarea > .lm-Widget').length
                      >= {n_views}""",
            timeout=TIMEOUT_MS,
        )
        sizes = page.evaluate(
            """() => Array.from(document.querySelectorAll('.widget-subarea')).map(
                    s => s.getBoundingClientRect().height)"""
        )
        assert len(sizes) == n_views and all(h > 0 for h in sizes), f"{path}: {sizes}"

    # Colab: notebook pages link to their own notebook on GitHub, which exists here.
    colab = {
        html.unescape(h)
        for h in page.eval_on_selector_all(
            'a[href^="https://colab.research.google.com/"]', "els => els.map(e => e.href)"
        )
    }
    if source is not None and source.suffix == ".ipynb":
        assert colab == {_colab_url(source)}, f"{path}: Colab links {colab}"
        rel = _colab_url(source).split("/blob/", 1)[1].split("/", 1)[1]
        assert (REPO / rel).is_file(), f"Colab link of {path} names a missing notebook {rel}"
    else:
        assert not colab, f"{path} is not a notebook but has Colab links {colab}"

    page.wait_for_load_state("networkidle")
    assert not log.problems(), f"{path}: {log.problems()}"


def _chapter_word(notebook: Path) -> str:
    """A distinctive word of a chapter: the longest word of its first paragraph."""
    nb = nbformat.read(notebook, as_version=4)
    first = next(c.source for c in nb.cells if c.cell_type == "markdown")
    paragraph = first.split("\n\n")[1]
    words = re.findall(r"[A-Za-z]{6,}", paragraph)
    assert words, f"{notebook}: no word to search for in {paragraph!r}"
    return max(words, key=len).lower()


CHAPTERS = sorted((REPO / "chapters").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_search_finds_chapter(open_page, notebook: Path) -> None:
    word = _chapter_word(notebook)
    page, _, log = open_page(f"search.html?q={quote(word)}")
    page.wait_for_function(
        """() => { const h = document.querySelector('#search-results h2');
                   return h && h.innerText.includes('Search Results'); }"""
    )
    hrefs = page.eval_on_selector_all(
        "#search-results ul.search li a", "els => els.map(e => e.href)"
    )
    target = f"chapters/{notebook.stem}.html"
    assert any(urlsplit(h).path.endswith(target) for h in hrefs), (word, hrefs)
    assert not log.problems(), log.problems()


def test_screenshots(open_page) -> None:
    """Full-page screenshots of the intro and one chapter, for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for path, name in [
        ("intro.html", "intro.png"),
        ("chapters/11-2-how-llms-work.html", "chapter-11-2.png"),
    ]:
        page, _, _ = open_page(path)
        if page.locator(".math").count():
            page.wait_for_selector("mjx-container")
        if page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count():
            page.wait_for_selector(".widget-subarea > .lm-Widget")
        page.wait_for_load_state("networkidle")
        out = SCREENSHOTS / name
        page.screenshot(path=str(out), full_page=True)
        assert out.stat().st_size > 10_000, f"{out} is suspiciously small"
