"""Deprecated name of lac_core/compare_runs.py: `python -m lac_core.compare A B`, which the docs
showed before the `lac` command existed (docs/ci.md until issue 36), still runs, with a
DeprecationWarning; `lac compare A B` is the command. "compare" alone now names only the command
and a run's COMPARE.md (its models side by side)."""
from __future__ import annotations

import sys
import warnings

from .compare_runs import main

MOVED_TO = ("lac_core.compare is deprecated: run `lac compare A B` (or python -m "
            "lac_core.compare_runs); the module is lac_core.compare_runs")

# Attributed to the importer, or to this module when it runs as a script: Python shows a
# DeprecationWarning raised in __main__ by default, so `python -m lac_core.compare` says it.
warnings.warn(MOVED_TO, DeprecationWarning, stacklevel=1 if __name__ == "__main__" else 2)

if __name__ == "__main__":
    sys.exit(main(prog="python -m lac_core.compare"))
