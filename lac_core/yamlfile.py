"""YAML read the strict way: a key repeated in one mapping is an error, not an overwrite (a
second `C1:` section or a second `personas:` would otherwise silently replace the first)."""
from __future__ import annotations

import reprlib
from pathlib import Path

import yaml

from .errors import LacError

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 76, 76, 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


class DuplicateKeyError(LacError):
    """A key repeated in one YAML or JSON mapping."""


def quote(value, limit: int = 80) -> str:
    """A value for an error message, cut to a readable length without walking all of it (YAML
    aliases can expand to gigabytes)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UniqueKeys(yaml.SafeLoader):
    """A YAML loader that refuses a key repeated in one mapping instead of keeping the last."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            repeated = key in seen
        except TypeError:  # an unhashable key: SafeLoader refuses it below, as a YAML error
            continue
        if repeated:
            raise DuplicateKeyError(f"duplicate key {quote(key)} (line "
                                    f"{key_node.start_mark.line + 1})")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(path: Path):
    """The YAML document in `path`; raises OSError, yaml.YAMLError or DuplicateKeyError."""
    return yaml.load(Path(path).read_text(), Loader=UniqueKeys)  # noqa: S506  a SafeLoader
