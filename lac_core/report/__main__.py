"""python -m lac_core.report RESULTS.json --lac-reports OUT (report.rebuild)."""
import sys

from .rebuild import main

sys.exit(main())
