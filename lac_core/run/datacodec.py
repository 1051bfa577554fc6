"""Values as data, never code: the one codec of what lac reads back from outside the process that
made it, a resume entry (resume.py) and an xdist worker's results (the wire: pack and unpack)."""
# A value becomes JSON text plus numpy arrays kept beside it (member name -> array). Values JSON
# cannot tell apart are tagged objects with one "$" key: {"$tuple": [...]}, {"$dict": [[k, v],
# ...]} (keys that are not strings, or start with "$"), {"$float": "nan" | "inf" | "-inf"},
# {"$array": member}, {"$scalar": member}, {"$record": [class name, {field: value}]} and, where a
# Codec allows them, {"$set": [...]} and {"$enum": [class name, value]}. Only the classes a Codec
# lists may be named, and a record is rebuilt through its constructor (its checks run). The round
# trip is exact (types, dtypes, shapes, NaN, dict order); anything else is refused: TypeError when
# encoding (better nothing than something that comes back different), ValueError when decoding.
#
# The wire: a worker's part (Worker in suite/distributed.py) is an npz archive in memory, the
# container of resume entries: member "meta" is a 0-d unicode array holding JSON text {"format",
# "export"}, each array or numpy scalar a member of its own; read with np.load(allow_pickle=False)
# only once its first bytes are a zip archive's. An npz rather than arrays inline in the JSON
# (base64 with a dtype and a shape): numpy's own reader then parses every dtype and shape and
# refuses object arrays (a pickle inside), so lac parses no dtype text of its own, and both uses
# share one container. The controller refuses a part that fails any check (WireError, a LacError):
# nothing of it is merged, and the run fails naming why.
from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from ..errors import LacError
from ..verdicts.kinds import Kind, Shared
from ..verdicts.results import RECORDS, ReadOnlyDict
from ..verdicts.rules import Part, Verdict

NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
RECORD_CLASSES = {cls.__name__: cls for cls, _name in RECORDS.values()}  # the experiments' records


@dataclass(frozen=True)
class Codec:
    """What may be encoded and decoded: the record classes, str enums and sets allowed, and the
    member names that are not the value's arrays."""

    records: Mapping  # class name -> dataclass "$record" may name
    refusal: str  # "cannot keep {} in a resume entry": what an encoding refusal says
    enums: Mapping = field(default_factory=dict)  # class name -> str Enum "$enum" may name
    sets: bool = False
    reserved: tuple = ()  # members that are never a value's array ("meta", "digest")
    max_depth: int | None = None  # deeper values are refused when decoded

    def encode(self, obj, arrays: dict):
        """A JSON value for `obj`; its arrays go to `arrays` (member name -> array)."""
        if obj is None or type(obj) in (bool, int, str):  # type(): np.float64 is a float, too
            return obj
        if type(obj) is float:
            return obj if math.isfinite(obj) else {"$float": str(obj)}
        if type(obj) is tuple:
            return {"$tuple": [self.encode(v, arrays) for v in obj]}
        if type(obj) is list:
            return [self.encode(v, arrays) for v in obj]
        if type(obj) is set and self.sets:
            return {"$set": [self.encode(v, arrays) for v in obj]}
        if type(obj) in (dict, ReadOnlyDict):  # in records; they come back as dicts (and records
            # make them read-only again)
            if all(type(k) is str and not k.startswith("$") for k in obj):
                return {k: self.encode(v, arrays) for k, v in obj.items()}
            return {"$dict": [[self.encode(k, arrays), self.encode(v, arrays)]
                              for k, v in obj.items()]}
        if type(obj) is np.ndarray or isinstance(obj, np.generic):
            arr = np.asarray(obj)
            if arr.dtype.hasobject:
                raise TypeError(self.refusal.format("an object array"))
            name = f"a{len(arrays)}"
            arrays[name] = arr
            return {"$array" if type(obj) is np.ndarray else "$scalar": name}
        name = type(obj).__name__
        if self.enums.get(name) is type(obj):
            return {"$enum": [name, obj.value]}
        if self.records.get(name) is type(obj):
            return {"$record": [name,  # the fields only: never cached properties
                                {f.name: self.encode(getattr(obj, f.name), arrays)
                                 for f in fields(obj)}]}
        raise TypeError(self.refusal.format(name))

    def decode(self, value, arrays: Mapping, depth: int = 0):
        """The object `encode` made `value` from; anything it would not have written raises."""
        if self.max_depth is not None and depth > self.max_depth:
            raise ValueError(f"nested deeper than {self.max_depth} levels")
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        inner = depth + 1
        if isinstance(value, list):
            return [self.decode(v, arrays, inner) for v in value]
        if not isinstance(value, dict):
            raise ValueError(f"unexpected JSON value {type(value).__name__}")
        if len(value) != 1 or not next(iter(value)).startswith("$"):
            return {k: self.decode(v, arrays, inner) for k, v in value.items()}
        (tag, arg), = value.items()
        if tag == "$tuple" and isinstance(arg, list):
            return tuple(self.decode(v, arrays, inner) for v in arg)
        if tag == "$set" and self.sets and isinstance(arg, list):
            return {self.decode(v, arrays, inner) for v in arg}
        if tag == "$dict" and isinstance(arg, list) and all(
                isinstance(p, list) and len(p) == 2 for p in arg):
            return {self.decode(k, arrays, inner): self.decode(v, arrays, inner) for k, v in arg}
        if tag == "$float" and arg in NONFINITE:
            return NONFINITE[arg]
        if tag in ("$array", "$scalar") and isinstance(arg, str) and arg not in self.reserved:
            arr = arrays[arg]  # KeyError for a member that is not there
            if tag == "$array":
                return arr
            if arr.shape != ():
                raise ValueError(f"member {arg} is not a scalar")
            return arr[()]
        if tag == "$enum" and self.enums and isinstance(arg, list) and len(arg) == 2:
            cls = self.enums.get(arg[0]) if isinstance(arg[0], str) else None
            if cls is None or not isinstance(arg[1], str):
                raise ValueError(f"{arg[0]!r} is not a vocabulary lac sends")
            return cls(arg[1])  # ValueError for a word not in it
        if tag == "$record" and isinstance(arg, list) and len(arg) == 2:
            cls_name, values = arg
            cls = self.records.get(cls_name) if isinstance(cls_name, str) else None
            if cls is None:
                raise ValueError(f"{cls_name!r} is not a result record")
            names = [f.name for f in fields(cls)]
            if not isinstance(values, dict) or sorted(values) != sorted(names):
                raise ValueError(f"the fields of {cls_name} do not match")
            return cls(**{k: self.decode(values[k], arrays, inner) for k in names})
        raise ValueError(f"unknown tag {tag}")


META = "meta"  # the member holding the JSON text, in a resume entry and on the wire

WIRE_FORMAT = "lac-wire/1"
ZIP = b"PK\x03\x04"  # the first bytes of an npz (a zip archive): nothing else is read at all
MAX_DEPTH = 64  # a real export nests about 10 deep (a verdict's parts' intervals)
WIRE = Codec({**RECORD_CLASSES, "Verdict": Verdict, "Part": Part},
             "cannot send {} to the xdist controller", enums={"Kind": Kind, "Shared": Shared},
             sets=True, reserved=(META,), max_depth=MAX_DEPTH)


class WireError(LacError):
    """What an xdist worker sent is not lac's data: refused whole, never merged."""

    def __init__(self, why: str):
        super().__init__(f"the results an xdist worker sent are refused ({why}); nothing of "
                         "them is merged: run every worker with the same lac source as the "
                         "controller")


def fields_like(part: dict, like: dict) -> None:
    """Refuse a part that lacks a field of `like` (the controller's own export) or holds another
    kind of container in one (None stands for a set not planned yet): what merging would trip
    over, said before anything of it is merged."""
    missing = [name for name in like if name not in part]
    if missing:
        raise WireError(f"it lacks {', '.join(missing)}")
    for name, mine in like.items():
        theirs = part[name]
        if isinstance(mine, (dict, list, set)) and type(theirs) is not type(mine) and not (
                theirs is None and type(mine) is set):
            raise WireError(f"its {name} is a {type(theirs).__name__}, not a "
                            f"{type(mine).__name__}")


def pack(export: dict) -> bytes:
    """A worker's part (a dict of field name -> value) as the bytes the controller unpacks."""
    arrays = {}
    meta = json.dumps({"format": WIRE_FORMAT, "export": WIRE.encode(export, arrays)},
                      allow_nan=False)
    buf = io.BytesIO()
    np.savez(buf, **{META: np.array(meta)}, **arrays)
    return buf.getvalue()


def _unpack(data) -> dict:
    if not isinstance(data, bytes):
        raise ValueError(f"{type(data).__name__}, not bytes")
    if not data.startswith(ZIP):
        raise ValueError(f"not an npz archive (it starts {data[:8]!r}): a pickle or another "
                         "program's bytes are never read")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        members = {m: npz[m] for m in npz.files}  # every array loaded: allow_pickle=False
    if not all(isinstance(a, np.ndarray) for a in members.values()):
        raise ValueError("a member is not an array")
    meta = members.get(META)
    if meta is None or meta.dtype.kind != "U" or meta.shape != ():
        raise ValueError("member meta is not JSON text")
    doc = json.loads(str(meta[()]))
    if not isinstance(doc, dict) or doc.get("format") != WIRE_FORMAT or "export" not in doc:
        raise ValueError(f"not {WIRE_FORMAT} data")
    export = WIRE.decode(doc["export"], members)
    if type(export) is not dict or not all(type(k) is str for k in export):
        raise ValueError("its top level is not a dict of field names")
    return export


def unpack(data) -> dict:
    """The part `pack` made `data` from, every value checked; WireError for anything else."""
    try:
        return _unpack(data)
    except RecursionError:  # JSON nested past what Python's reader can follow
        raise WireError(f"nested deeper than {MAX_DEPTH} levels") from None
    except Exception as exc:  # noqa: BLE001  any fault in data from elsewhere: refused whole
        raise WireError(f"{type(exc).__name__}: {exc}") from None
