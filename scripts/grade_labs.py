"""Command line of ``coursekit.grade_labs`` (its docstring says what it does and how).

``python3 scripts/grade_labs.py --help`` works from anywhere; from the repository root,
``python3 -m coursekit.grade_labs`` is the same command.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: coursekit

from coursekit.grade_labs import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
