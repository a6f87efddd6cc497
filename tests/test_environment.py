"""environment.yml, the README's quick start and CI agree with each other."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
OPTIONAL = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
    "optional-dependencies"
]


def _quickstart(name: str) -> list[str]:
    """Lines of the fenced code block that follows ``<!-- quickstart:name -->`` in the README."""
    match = re.search(
        rf"^<!-- quickstart:{name} -->\n```\w*\n(.*?)\n```", README, flags=re.MULTILINE | re.DOTALL
    )
    assert match, f"README.md has no fenced block after <!-- quickstart:{name} -->"
    return match.group(1).splitlines()


def _extras(text: str) -> set[str]:
    """Extras of an editable install of this repository: `-e .[a,b]` or `-e ".[a,b]"`."""
    found = re.findall(r"-e\s+\"?\.\[([\w,\s-]+)\]\"?", text)
    assert len(found) == 1, f"expected one `-e .[extras]` in {text!r}"
    return {e.strip() for e in found[0].split(",")}


def test_quickstart_is_two_one_line_commands():
    install, test = _quickstart("install"), _quickstart("test")
    assert len(install) == 1 and len(test) == 1
    assert "pip install" in install[0] and "jupyter-book build . -W -n --keep-going" in install[0]
    assert "apt-get" in (REPO / "scripts" / "install-system.sh").read_text(encoding="utf-8")
    assert install[0].startswith("bash scripts/install-system.sh")
    assert test[0] == "bash scripts/test.sh"


def test_environment_yml_installs_the_readme_extras():
    env = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert len(pip) == 1
    env_extras = _extras(pip[0])
    readme_extras = _extras(_quickstart("install")[0])
    assert env_extras == readme_extras
    assert env_extras <= set(OPTIONAL), f"unknown extras {env_extras - set(OPTIONAL)}"


def test_readme_extras_cover_book_and_tests():
    """The quick start must install what the book build and the test command need."""

    def expand(names: set[str]) -> set[str]:
        out = set(names)
        for name in names:
            for req in OPTIONAL[name]:
                m = re.fullmatch(r"jaxllm\[([\w,]+)\]", req.replace(" ", ""))
                if m:
                    out |= expand(set(m.group(1).split(",")))
        return out

    assert {"book", "test", "viz", "tokenizers"} <= expand(_extras(_quickstart("install")[0]))


def test_ci_runs_exactly_the_readme_commands():
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "run"), "--print-commands"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert proc.stdout.splitlines() == _quickstart("install") + _quickstart("test")


def test_readme_keeps_the_sections_others_fill():
    assert re.search(r"^## Using the jaxllm package$", README, flags=re.MULTILINE)
    assert re.search(r"^## How to cite$", README, flags=re.MULTILINE)
    assert "MIT" in README and "CC BY 4.0" in README
