"""`python -m lac_core.list`: the models lac knows by name and the grids it ships, with where each
comes from and what it runs (the names --lac-model and --lac-grid take)."""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None, prog: str = "python -m lac_core.list") -> int:
    argparse.ArgumentParser(prog=prog, description=__doc__.split(":", 1)[1].strip()
                            ).parse_args(argv)
    from .models import REGISTRY
    from .paths import GRID_DIR
    from .protocol.grids import load_grid

    print("models (--lac-model NAME; also a hub id, a GGUF file or a model folder):")
    for name, spec in REGISTRY.items():
        where = {"pypi-gguf": "PyPI GGUF", "hub": f"hub {spec.hub_id}",
                 "tiny": "built locally, random"}.get(spec.source, spec.source)
        print(f"  {name:30} {spec.n_layers:3} layers  {where}")
    print("grids (--lac-grid NAME; also a YAML or JSON file of yours):")
    for path in sorted(GRID_DIR.glob("*.yaml")):
        grid = load_grid(path)
        print(f"  {grid.name:10} {len(grid.personas)} personas x {len(grid.tasks)} tasks, "
              f"runs {', '.join(grid.experiments)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
