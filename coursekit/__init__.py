"""Course tooling: notebook templates, notebook execution, lab assignment and grading.

Not part of what a ``jaxllm`` user needs, so not part of the ``jaxllm`` wheel (setuptools
packages only ``jaxllm*``). It is imported from a checkout of the repository:

- pytest puts the repository root on ``sys.path`` (``pythonpath = ["."]`` in pyproject.toml);
- the command lines in ``scripts/`` add it themselves (one line each), so
  ``python3 scripts/<tool>.py`` works from anywhere, and ``python3 -m coursekit.<tool>`` works
  from the repository root.

Modules:

- ``notebook_template``  the first cells of every chapter notebook (the Colab install cell)
- ``lab_template``       the first cell of every lab notebook
- ``assign_labs``        ``otter assign`` for every lab: student notebooks and autograders
- ``grade_labs``         grade a folder of submissions with the hidden tests, without Docker
- ``execute_notebooks``  re-execute notebooks in place to regenerate their committed outputs
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
