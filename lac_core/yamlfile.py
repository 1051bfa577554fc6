"""YAML read the strict way: a key repeated in one mapping is an error, not an overwrite (a
second `C1:` section or a second `personas:` would otherwise silently replace the first).
Thresholds and expectations are read in the dialect lac writes expectations in (ruamel.yaml,
YAML 1.2: `2e-06` and `5e-2` are numbers, as they are in the file lac wrote); grids keep PyYAML's
YAML 1.1, which their content hashes were taken in."""
from __future__ import annotations

import reprlib
from pathlib import Path

import yaml

from .errors import LacError
from .readfile import Kind, checked, read_text, refuse

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


def _yaml12():
    """ruamel's safe loader (YAML 1.2, the dialect ruamel writes) refusing a repeated key."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import SafeConstructor

    class Unique(SafeConstructor):
        def check_mapping_key(self, node, key_node, mapping, key, value) -> bool:
            if key in mapping:
                raise DuplicateKeyError(f"duplicate key {quote(key)} (line "
                                        f"{key_node.start_mark.line + 1})")
            return True

    loader = YAML(typ="safe", pure=True)
    loader.Constructor = Unique
    return loader


def load_yaml(path: Path, kind: Kind):
    """The YAML 1.2 document in `path`, read through lac's one reader (readfile) and checked
    (numbers finite and within a float, aliases bounded); anything else is one Unreadable
    naming the file."""
    from ruamel.yaml import YAMLError

    text = read_text(path, kind)
    try:
        data = _yaml12().load(text)
    except DuplicateKeyError as exc:
        raise refuse(path, kind, str(exc)) from None
    except RecursionError:
        raise refuse(path, kind, "nested too deeply to read") from None
    except (YAMLError, ValueError) as exc:  # ValueError: an integer of 4300+ digits
        raise refuse(path, kind, f"not valid YAML ({str(exc)[:200]})") from None
    return checked(data, path, kind)
