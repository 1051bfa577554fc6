"""`python -m lac_core COMMAND`: the same as the `lac` command (lac_core/cli.py)."""
from .cli import main

raise SystemExit(main())
