"""Write ``constraints.txt``: the exact versions of everything ``jaxllm[all]`` installs.

Run it in the environment where the tests passed (``bash scripts/test.sh``)::

    python3 scripts/make_constraints.py                # writes constraints.txt
    python3 scripts/make_constraints.py --check        # exit 1 if the file is not this env

It follows the requirements of ``jaxllm[<extras>]`` in this checkout's pyproject.toml through
the installed packages' metadata (markers and extras evaluated here) and pins each package
found at its installed version. Anyone can then reproduce the set::

    python3 -m pip install -c constraints.txt -e ".[all]"

CI does the same through ``PIP_CONSTRAINT`` (.github/workflows/tests.yml); the weekly run
(.github/workflows/weekly.yml) installs the newest releases instead, and when it passes this
file can be regenerated from its environment.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "constraints.txt"


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**default_environment(), "extra": e}) for e in extras or {""})


def pinned(extras: list[str], pyproject: Path = REPO_ROOT / "pyproject.toml") -> dict[str, str]:
    """``{name: installed version}`` for the whole tree of ``jaxllm[extras]``'s requirements."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    todo: list[Requirement] = [Requirement(r) for r in project["dependencies"]]
    wanted, seen_extras = list(extras), set()
    while wanted:  # jaxllm's own extras refer to each other (all -> book, test, ...)
        extra = wanted.pop()
        if extra in seen_extras:
            continue
        if extra not in optional:
            raise ValueError(f"unknown extra {extra!r}; pyproject.toml has {sorted(optional)}")
        seen_extras.add(extra)
        for text in optional[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "jaxllm":
                wanted.extend(req.extras)
            else:
                todo.append(req)
    found: dict[str, str] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in visited:
            continue
        visited.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # a requirement whose marker excludes this platform, or not installed
        found[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if _applies(sub, set(req.extras)):
                todo.append(sub)
    return dict(sorted(found.items()))


def render(pins: dict[str, str], extras: list[str]) -> str:
    head = "\n".join([
        "# The exact versions of the environment the tests ran in: every package that",
        f"# jaxllm[{','.join(extras)}] installs, on Python {platform.python_version()}"
        f" ({sys.platform}). Reproduce the set with",
        '#   python3 -m pip install -c constraints.txt -e ".[all]"',
        "# Made by `python3 scripts/make_constraints.py` in that environment; regenerate it",
        "# after a green `bash scripts/test.sh`. pyproject.toml keeps lower bounds only.",
        "",
    ])
    return head + "".join(f"{name}=={version}\n" for name, version in pins.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="all", help="jaxllm extras to follow (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help="file to write")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the file differs from this environment")
    args = parser.parse_args(argv)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    pins = pinned(extras)
    text = render(pins, extras)
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'matches' if same else 'differs from'} this environment")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(pins)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
