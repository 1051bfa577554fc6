"""One run's settings, built once (from pytest options, or by hand) and passed explicitly."""
# Environment variables are read here and nowhere else, and only the documented user inputs:
# LAC_CACHE_DIR (weights cache), LAC_OFFLINE (never download), LAC_DEVICE (device).
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..engine import DEFAULT_TOKEN_BUDGET
from ..paths import CLAIMS_FILE, EXPECTED, FIXTURES, ROOT  # noqa: F401  ROOT, FIXTURES: public
from ..errors import UsageError
from ..protocol.prompts import PROBES
from ..verdicts.kinds import Kind

DEFAULT_MODELS = ("smollm2-135m-instruct",)
DEFAULT_GRIDS = ("short", "long", "markers")
PLANS = ("fast", "naive")
# The settings each experiment reads beyond those every one reads (model, dtype, device,
# attention, chat template, token budget): an experiment's resume key and the expectations setup
# of its claims hold only these, so a setting invalidates only what it changes. The sweep reads
# the swept layers, probes and plan; steering the swap pairs; residuals, target, markers and host
# none (markers and steering read the marker stems of claims.yaml, Session.result_key).
READS = {Kind.SWEEP: ("layers", "probes", "plan"), Kind.STEERING: ("swap_pairs",)}


TRUE, FALSE = ("1", "true", "yes", "on", "y"), ("", "0", "false", "no", "off", "n")
# Every LAC_* variable lac reads (the readers are below): what a pytest-xdist controller passes on
# to its workers, remote ones included (suite/distributed.py, docs/scale.md).
ENVIRONMENT = ("LAC_CACHE_DIR", "LAC_OFFLINE", "LAC_DEVICE")


def env_cache_dir() -> Path:
    return Path(os.environ.get("LAC_CACHE_DIR") or Path.home() / ".cache" / "lac").expanduser()


def env_offline() -> bool:
    """LAC_OFFLINE: a value that is neither true nor false is an error, never a silent 'online'
    (it is how a user forbids downloads)."""
    value = os.environ.get("LAC_OFFLINE", "").strip().lower()
    if value not in TRUE + FALSE:
        raise UsageError(f"LAC_OFFLINE={os.environ['LAC_OFFLINE']!r}: use 1, true, yes, on (never "
                         "download) or 0, false, no, off")
    return value in TRUE


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] = DEFAULT_MODELS
    grids: tuple[str, ...] = DEFAULT_GRIDS  # names of files in fixtures/grids/, or paths
    plan: str = "fast"
    token_budget: int = DEFAULT_TOKEN_BUDGET
    layers: tuple | None = None  # swept layers: indices (int) or depth fractions (float)
    probes: tuple[str, ...] = PROBES
    chat_template: str | None = None  # a built-in name or a Jinja file; None: the model's own
    raw: bool = False  # --lac-no-chat-template
    dtype: str | None = None  # None or "auto": registered dtype, else by device
    attention: str = "grouped"  # attention.IMPLEMENTATIONS: eager arithmetic without K/V copies
    threads: int | str | None = None  # torch threads: a number, "auto" (the free cores), or None
    # (torch's default; under xdist cores / workers)
    offline: bool = field(default_factory=env_offline)
    device: str | None = field(default_factory=lambda: os.environ.get("LAC_DEVICE") or None)
    cache_dir: Path = field(default_factory=env_cache_dir)
    report_dir: Path = field(default_factory=lambda: Path.cwd() / "reports")
    expected_dir: Path = EXPECTED
    claims_file: Path = CLAIMS_FILE
    update_baselines: bool = False
    regen_all: bool = False  # update the baselines and pass (--lac-update-baselines fails)
    reports_overwrite: bool = False  # replace files in the report folder that lac did not write
    no_cache: bool = False  # recompute every experiment, ignoring the resume cache
    swap_pairs: str = "next"  # persona swap: each persona with the next in the grid, or "all"
    collect_only: bool = False  # pytest --collect-only: resolve models without downloading any
    pins: tuple[tuple[str, str], ...] = ()  # --lac-on: (model, xdist gateway id), scheduling only
    gpus: tuple[int, ...] | None = None  # an xdist worker's own GPUs (suite.start.placed, docs/
    # scale.md); None: every visible one. Not an option: --lac-device names a device instead

    def __post_init__(self):
        if self.plan not in PLANS:
            raise UsageError(f"--lac-plan {self.plan!r}: choose one of {', '.join(PLANS)}")
        if not isinstance(self.token_budget, int) or self.token_budget < 1:
            raise UsageError(f"--lac-token-budget {self.token_budget!r}: must be a positive number "
                             f"of tokens (default {DEFAULT_TOKEN_BUDGET})")
        if self.attention not in ("grouped", "eager", "sdpa"):
            raise UsageError(f"--lac-attention {self.attention!r}: choose grouped, eager or sdpa")
        if self.threads is not None and self.threads != "auto" and (
                not isinstance(self.threads, int) or isinstance(self.threads, bool)
                or self.threads < 1):
            raise UsageError(f"--lac-threads {self.threads!r}: give a positive number of threads "
                             "or auto")
        if self.swap_pairs not in ("next", "all"):
            raise UsageError(f"--lac-swap-pairs {self.swap_pairs!r}: choose next or all")
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown or not self.probes:
            raise UsageError(f"--lac-probes: unknown probe {unknown[0] if unknown else '(none)'}; "
                             f"choose from {', '.join(PROBES)}")

    @property
    def updating(self) -> bool:
        """Whether this run rewrites expectations (--lac-update-baselines, --lac-regen-all)."""
        return self.update_baselines or self.regen_all

    def read_by(self, kind: str) -> dict:
        """The settings experiment `kind` reads of those only some read (READS), by name."""
        return {name: getattr(self, name) for name in READS.get(kind, ())}

    def load_options(self):
        """What loading a model reads of these settings."""
        from ..models.load import LoadOptions

        return LoadOptions(self.dtype, self.device, self.attention, self.cache_dir, self.offline,
                           self.gpus)

    @classmethod
    def from_options(cls, get) -> "Settings":
        """From pytest options (`get` is `config.getoption`); an option left unset keeps the
        field's default."""
        values = {name: (get(flag), convert) for flag, name, convert, _kw, _help in OPTIONS}
        return cls(**{name: convert(v) for name, (v, convert) in values.items()
                      if v is not None and v is not False}, collect_only=bool(get("collectonly")))


def parse_layers(text: str) -> tuple:
    """'4,8,12' (indices) or '0.25,0.5' (depth fractions), each given once: indices from 1,
    fractions strictly between 0 and 1 (whether they land in range is checked per model)."""
    how = ("give layer indices (4,8,12; from 1: layer 0's input is the embedding output) or depth "
           "fractions (0.25,0.5; between 0 and 1), comma-separated, each once")
    try:
        values = [float(x) if "." in x else int(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--lac-layers {text!r}: {how}") from None
    for i, x in enumerate(values):
        if (isinstance(x, int) and x < 1) or (isinstance(x, float) and not 0 < x < 1):
            raise UsageError(f"--lac-layers {text!r}: {x} is out of range; {how}")
        if x in values[:i]:
            raise UsageError(f"--lac-layers {text!r}: {x} is given twice; {how}")
    return tuple(values)


def parse_probes(text: str) -> tuple[str, ...]:
    probes = tuple(p.strip() for p in text.split(","))
    twice = [p for i, p in enumerate(probes) if p in probes[:i]]
    if twice:
        raise UsageError(f"--lac-probes {text!r}: {twice[0]} is given twice; name each probe once "
                         f"(of {', '.join(PROBES)})")
    return probes


def default_threads(cores: int, workers: int | None, load: float) -> int:
    """Torch threads for --lac-threads auto: the cores other jobs leave free (`load`, the
    one-minute load average when lac starts, before its own work), at most cores / the xdist
    workers on this host (suite.start.host_share).
    OpenMP threads spin at their barriers: one thread more than the free cores made a sweep 2x to
    8x slower on a shared 2-core machine (docs/performance.md). Not the default: float32 sums
    split over another number of threads differ in the 7th digit, and a count that follows the
    load would give the same command other numbers on another day."""
    share = max(1, cores // workers) if workers else max(1, cores)
    return max(1, min(share, cores - round(max(0.0, load))))


def parse_threads(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--lac-threads {text!r}: give a positive number of torch threads, or "
                         "auto (the cores other jobs leave free; default: torch's own, under "
                         "pytest-xdist cores / workers)")
    return n


def _texts(flag: str):
    """A converter for repeatable text options: none may be empty (an empty path would name the
    current folder)."""
    def convert(values) -> tuple[str, ...]:
        if any(not v.strip() for v in values):
            raise UsageError(f"{flag} '' is empty; name what to run (see pytest --help, group lac)")
        return tuple(values)
    return convert


def parse_pins(values) -> tuple[tuple[str, str], ...]:
    """--lac-on MODEL=GATEWAY, repeatable: each model on one gateway (whether the model is in the
    run and the gateway one of its --tx is checked once both are known: suite/distributed.py)."""
    pins: dict[str, str] = {}
    for text in values:
        model, sep, gateway = (part.strip() for part in text.partition("="))
        if not (model and sep and gateway) or "=" in gateway:
            raise UsageError(f"--lac-on {text!r}: write MODEL=GATEWAY_ID, a model of this run and "
                             "the id of a pytest-xdist gateway (--tx ...//id=GATEWAY_ID)")
        if pins.get(model, gateway) != gateway:
            raise UsageError(f"--lac-on {text!r}: {model} is already pinned to {pins[model]}; "
                             "a model runs on one gateway")
        pins[model] = gateway
    return tuple(pins.items())


def _template(text: str) -> str:
    if not text.strip():
        raise UsageError("--lac-chat-template '' is empty; name a Jinja file or a built-in "
                         "template, or leave the option out to use the model's own")
    return text


def _folder(text: str, flag: str = "--lac-reports") -> Path:
    if not text.strip():
        raise UsageError(f"{flag} is empty; name a folder (see pytest --help, group lac)")
    return Path(text).expanduser()


DTYPES = {"float32": "float32", "fp32": "float32", "f32": "float32", "bfloat16": "bfloat16",
          "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "half": "float16",
          "auto": "auto"}


def parse_dtype(text: str) -> str:
    """A dtype name, made canonical (fp16 -> float16, bf16 -> bfloat16) before any key is built."""
    try:
        return DTYPES[text.strip().lower()]
    except KeyError:
        raise UsageError(f"--lac-dtype {text!r}: choose float32, bfloat16, float16 or auto (fp32, "
                         "bf16, fp16 are read as these)") from None


OPTIONS = [  # flag, Settings field, conversion, argparse keywords, help (which names the default)
    ("--lac-model", "models", _texts("--lac-model"), dict(action="append"),
     "model to check: a registry name (python -m lac_core.list), a hub id (ID or ID@REVISION), "
     f"a GGUF file or a model folder; repeatable (default: {DEFAULT_MODELS[0]})"),
    ("--lac-grid", "grids", _texts("--lac-grid"), dict(action="append"),
     "grid to run: a shipped grid's name (python -m lac_core.list) or a YAML/JSON grid file; "
     f"repeatable (default: {', '.join(DEFAULT_GRIDS)})"),
    ("--lac-layers", "layers", parse_layers, {},
     "swept layers: indices (4,8,12) or depth fractions (0.25,0.5) (default: the paper's "
     "fractions 0.25,0.40,0.55,0.70,0.85)"),
    ("--lac-probes", "probes", parse_probes, {},
     f"probes to sweep, comma-separated (default: {','.join(PROBES)})"),
    ("--lac-chat-template", "chat_template", _template, {},
     "render prompts with this chat template: a Jinja file, or chatml, gemma, llama3 (default: "
     "the model's own)"),
    ("--lac-no-chat-template", "raw", bool, dict(action="store_true"),
     "raw prompts: the user text after the tokenizer's BOS, for base models (default: off)"),
    ("--lac-dtype", "dtype", parse_dtype, {},
     "model precision: float32, bfloat16, float16 or auto (default: auto: a registered model's "
     "own, else bfloat16 on a GPU and float32 on the CPU)"),
    ("--lac-attention", "attention", str, dict(choices=("grouped", "eager", "sdpa")),
     "attention: grouped (eager arithmetic without copying grouped keys/values), eager "
     "(transformers' own) or sdpa (fused; numbers move) (default: grouped)"),
    ("--lac-device", "device", str, {},
     "cpu, cuda, cuda:N, mps or auto; auto spreads a model over every visible GPU (default: "
     "$LAC_DEVICE, else auto, where each pytest-xdist worker on a host gets its own GPU(s))"),
    ("--lac-threads", "threads", parse_threads, {},
     "torch CPU threads, or auto: the cores other jobs leave free at start, by the load "
     "average (fast on a shared machine; numbers may move in the 7th digit with the count) "
     "(default: torch's own; under pytest-xdist, cores / workers on the host)"),
    ("--lac-plan", "plan", str, dict(default="fast", choices=PLANS),
     "execution plan of the sweep; naive runs one full forward per site, the oracle "
     "(default: fast)"),
    ("--lac-token-budget", "token_budget", int, dict(type=int, default=DEFAULT_TOKEN_BUDGET),
     f"max tokens per forward call, cached ones included: the memory knob (default: "
     f"{DEFAULT_TOKEN_BUDGET})"),
    ("--lac-no-cache", "no_cache", bool, dict(action="store_true"),
     "recompute every experiment: neither read nor keep results in the resume cache "
     "(default: off)"),
    ("--lac-swap-pairs", "swap_pairs", str, dict(choices=("next", "all")),
     "persona swap: each persona with the next in the grid's order, or with every other "
     "(default: next)"),
    ("--lac-offline", "offline", bool, dict(action="store_true"),
     "never download: a model not in the caches is an error (default: off, or $LAC_OFFLINE)"),
    ("--lac-update-baselines", "update_baselines", bool, dict(action="store_true"),
     "rewrite the expectations of each model that ran from this run, print what changed and "
     "fail, for review (default: off)"),
    ("--lac-regen-all", "regen_all", bool, dict(action="store_true"),
     "rewrite the expectations like --lac-update-baselines, and pass (default: off)"),
    ("--lac-reports", "report_dir", _folder, {},
     "folder of the report set: results.json, REPORT.md, SUMMARY.md, figures (default: ./reports)"),
    ("--lac-reports-overwrite", "reports_overwrite", bool, dict(action="store_true"),
     "replace regular files in the report folder that lac did not write (default: off)"),
    ("--lac-on", "pins", parse_pins, dict(action="append", metavar="MODEL=GATEWAY_ID"),
     "under pytest-xdist, run MODEL's tests only on the gateway with this id (--tx ...//id=ID; "
     "ids gw0, gw1, ... otherwise); repeatable (default: any worker)"),
    ("--lac-expected-dir", "expected_dir", lambda t: _folder(t, "--lac-expected-dir"), {},
     "folder of the per-model expectations (default: the ones lac ships)"),
]
