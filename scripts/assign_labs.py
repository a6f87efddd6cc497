"""Command line of ``coursekit.assign_labs`` (its docstring says what it does and how).

``python3 scripts/assign_labs.py --help`` works from anywhere; from the repository root,
``python3 -m coursekit.assign_labs`` is the same command.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: coursekit

from coursekit.assign_labs import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
