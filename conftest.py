"""Repository-wide pytest hooks (unit tests live in tests/; see also pyproject.toml).

- Never collect from build outputs or npm packages, even with ``--nbval-lax`` and no paths.
- nbval: ignore what checked cells write to stderr (JAX/XLA warnings, progress bars); only
  their stdout and displayed results are compared with the committed outputs.
"""

from __future__ import annotations

import pytest

collect_ignore_glob = [
    "_build/*",
    "node_modules/*",
    "_ext/node_modules/*",
    "labs/dist/*",
    "**/.ipynb_checkpoints/*",
]


def pytest_collectstart(collector: pytest.Collector) -> None:
    if type(collector).__name__ == "IPyNbFile" and hasattr(collector, "skip_compare"):
        if "stderr" not in collector.skip_compare:
            collector.skip_compare = (*collector.skip_compare, "stderr")
