"""Command line of ``coursekit.execute_notebooks`` (its docstring says what it does and how).

``python3 scripts/execute_notebooks.py --help`` works from anywhere; from the repository root,
``python3 -m coursekit.execute_notebooks`` is the same command.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: coursekit

from coursekit.execute_notebooks import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
