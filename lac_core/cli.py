"""`lac COMMAND ...`: lac's commands outside pytest, one entry point (also `python -m lac_core`).
Each command's module is imported only when it runs, so `lac --help` and `lac COMMAND --help`
import nothing heavy (no torch, transformers or numpy)."""
from __future__ import annotations

import importlib
import sys

# command -> (module with main(argv, prog), one line of help)
COMMANDS = {
    "compare": ("lac_core.compare_runs", "what moved between two runs' results.json"),
    "list": ("lac_core.list", "the models lac knows by name and the grids it ships"),
    "fetch": ("lac_core.fetch", "put model weights into the caches ahead of an offline run"),
    "report": ("lac_core.report.rebuild", "a run's report set rendered again from its results.json"),
    "merge": ("lac_core.merge", "shards' results.json merged into one report set and one gate"),
}
USAGE = "usage: lac COMMAND [ARGS...]   (lac COMMAND --help for a command's own options)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE + "\n\ncommands:")
        for name, (_module, what) in COMMANDS.items():
            print(f"  {name:8} {what}")
        print("\nThe claims themselves run under pytest: pytest claims/ (docs/options.md).")
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"lac: no command {args[0]!r}; the commands are {', '.join(COMMANDS)}\n{USAGE}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    return module.main(args[1:], prog=f"lac {args[0]}")


if __name__ == "__main__":
    raise SystemExit(main())
