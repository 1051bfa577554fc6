"""The vocabulary of experiment kinds, spelled once: what a run computes per (model, grid), the
parts several of them share, and the name of each kind's pytest fixtures. Every other module
names a kind by its member (tests/test_kinds.py fails on a kind spelled as a bare string)."""
# A member is a str: it is equal to, hashes as, formats as and is written to JSON as its value, so
# results.json, resume keys, expectations, messages and test ids read the same strings as before
# the vocabulary existed, and a key read back from a file ("sweep") finds the member's entry.
# This module imports nothing but the standard library: the pytest plugin loads it at import time.
from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    """A str-valued member that reads as its plain value everywhere text is made (str, format,
    repr), on every Python lac supports (enum.StrEnum is 3.11+)."""

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Kind(_Word):
    """An experiment a run keeps a result of (verdicts/results.py RECORDS)."""

    SWEEP = "sweep"  # experiment 1: the localized sweep
    MARKERS = "markers"  # experiment 2: persona markers in greedy generations
    HOST = "host"  # experiments 3 and 4: host injection at one layer and at many
    STEERING = "steering"  # dose and swap at the marker site (read by the report only)


class Shared(_Word):
    """A part several experiments continue, computed and kept once per (model, grid)."""

    RESIDUALS = "residuals"  # residuals at p_last of the four conditions: markers, host, steering
    TARGET = "target"  # the clean XY prompts' first greedy tokens: host and steering


CLAIMED = (Kind.SWEEP, Kind.MARKERS, Kind.HOST)  # the kinds whose result a claim can read

# The prefix of a kind's fixtures (<prefix>_grid, _cell, _result): the names claim tests and
# users' claim files ask for, kept as they were.
FIXTURE = {Kind.SWEEP: "sweep", Kind.MARKERS: "marker", Kind.HOST: "host"}
