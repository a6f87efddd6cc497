"""Sphinx extension: serve MathJax 3 and the ipywidgets embed manager from the built site.

Sphinx and myst-nb load MathJax, RequireJS and the ipywidgets HTML manager from public CDNs
by default, so equations and saved widgets would not render without internet. This extension
installs pinned copies from the npm registry (``npm ci`` with ``_ext/package-lock.json``) into
the git-ignored ``_ext/node_modules`` when they are missing, and copies the files the browser
needs into ``_build/html/_static/vendor/``. ``_config.yml`` points ``mathjax_path`` and
``nb_ipywidgets_js`` at those copies; this extension checks that every local path named there
exists, so a typo fails the build instead of a page.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
VENDOR = "vendor"  # folder inside _static

# (npm package, folder inside the package, destination inside _static/vendor, file patterns;
#  None copies the whole folder)
COPIES: list[tuple[str, str, str, list[str] | None]] = [
    ("mathjax", "es5", "mathjax", None),
    # package.json files record the version and licence of what is served.
    ("mathjax", "", "mathjax", ["LICENSE", "package.json"]),
    ("requirejs", "", "requirejs", ["require.js", "package.json"]),
    (
        "@jupyter-widgets/html-manager",
        "dist",
        "jupyter-widgets",
        # The bundle and the icon fonts its CSS refers to (by path relative to the bundle).
        ["embed-amd.js", "*.woff", "*.woff2", "*.ttf", "*.eot", "*.svg", "*.LICENSE.txt"],
    ),
    ("@jupyter-widgets/html-manager", "", "jupyter-widgets", ["package.json"]),
]
# Files of this repository copied next to the bundles.
LOCAL_FILES: list[tuple[Path, str]] = [
    (HERE / "static" / "widgets-config.js", "jupyter-widgets/widgets-config.js"),
]


def _wanted_versions() -> dict[str, str]:
    manifest = json.loads((HERE / "package.json").read_text(encoding="utf-8"))
    return dict(manifest["dependencies"])


def _installed_version(package: str) -> str | None:
    manifest = NODE_MODULES / package / "package.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8")).get("version")


def ensure_npm_packages() -> None:
    """Run ``npm ci`` in ``_ext/`` unless the pinned versions are already installed."""
    wanted = _wanted_versions()
    stale = {p: v for p, v in wanted.items() if _installed_version(p) != v}
    if not stale:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ExtensionError(
            "offline_assets: npm is needed once to fetch MathJax and the ipywidgets embed "
            f"manager ({', '.join(f'{p}@{v}' for p, v in stale.items())}); install Node.js "
            "and npm (e.g. `apt-get install -y nodejs npm`) and build again"
        )
    logger.info("offline_assets: npm ci in %s (%s)", HERE, ", ".join(stale))
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
    result = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ExtensionError(
            f"offline_assets: `{' '.join(cmd)}` in {HERE} failed "
            f"(exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    still = {p: _installed_version(p) for p in wanted if _installed_version(p) != wanted[p]}
    if still:
        raise ExtensionError(f"offline_assets: wrong versions after npm ci: {still}")


def copy_assets(static_dir: Path) -> list[Path]:
    """Copy the vendored browser files into ``static_dir/vendor``; return what was written."""
    written: list[Path] = []
    vendor = static_dir / VENDOR
    for package, sub, dest, patterns in COPIES:
        src = NODE_MODULES / package / sub if sub else NODE_MODULES / package
        if not src.is_dir():
            raise ExtensionError(f"offline_assets: missing {src} (npm ci did not install it)")
        target = vendor / dest
        target.mkdir(parents=True, exist_ok=True)
        if patterns is None:
            shutil.copytree(src, target, dirs_exist_ok=True)
            written.append(target)
            continue
        matched = [
            f for f in sorted(src.iterdir())
            if f.is_file() and any(fnmatch.fnmatch(f.name, p) for p in patterns)
        ]
        if not matched:
            raise ExtensionError(f"offline_assets: nothing in {src} matches {patterns}")
        for f in matched:
            shutil.copy2(f, target / f.name)
            written.append(target / f.name)
    for src_file, dest in LOCAL_FILES:
        target = vendor / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_file, target)
        written.append(target)
    return written


def _local_asset_paths(app: Sphinx) -> list[str]:
    """The asset paths in the configuration that must be served from ``_static``."""
    paths = [app.config.mathjax_path]
    paths += list(getattr(app.config, "nb_ipywidgets_js", {}) or {})
    return [p for p in paths if p]


def _on_builder_inited(app: Sphinx) -> None:
    if app.builder.format != "html":
        return
    for path in _local_asset_paths(app):
        if "://" in path or path.startswith("//"):
            raise ExtensionError(
                f"offline_assets: {path!r} would be fetched from the internet by every reader; "
                f"point it at a file under _static/{VENDOR}/ instead (see _config.yml)"
            )
    ensure_npm_packages()
    static_dir = Path(app.outdir) / "_static"
    copy_assets(static_dir)
    for path in _local_asset_paths(app):
        if not (static_dir / path).is_file():
            raise ExtensionError(
                f"offline_assets: _config.yml names {path!r}, but _static/{path} was not "
                "provided; it must be one of the files copied by _ext/offline_assets.py"
            )


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", _on_builder_inited)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
