"""Persona-marker matching (experiment 2), plain Python."""
# Case-insensitive. A marker containing a space or hyphen matches as a substring; a single word
# matches as a whole word; a stem (fixtures/claims.yaml, markers.stems: the paper's lawyer list
# has `indemnif`) matches at a word start with any ending (indemnify, indemnification).
# "Whole word" asks for a non-word neighbour only on a side where the marker's own character is
# a word character: `\b` there would demand a word character next to `+`, `(` or an emoji, so
# `c++`, `(x` or `🏴‍☠️` could never match. For a marker that starts and ends with word
# characters the lookarounds are exactly `\b...\b` (the paper's counts stay the same).
from __future__ import annotations

import re
from functools import lru_cache

_WORD = re.compile(r"\w")


@lru_cache(maxsize=None)
def _pattern(marker: str, stem: bool) -> re.Pattern:
    text = re.escape(marker)
    if " " in marker or "-" in marker:
        return re.compile(text, re.IGNORECASE)
    start = r"(?<!\w)" if _WORD.match(marker[0]) else ""
    if stem:
        return re.compile(rf"{start}{text}\w*", re.IGNORECASE)
    end = r"(?!\w)" if _WORD.match(marker[-1]) else ""
    return re.compile(rf"{start}{text}{end}", re.IGNORECASE)


def hits(text: str, markers, stems=()) -> list[str]:
    """The distinct markers of the list that occur in the text, in list order."""
    stems = set(stems)
    return [m for m in dict.fromkeys(markers) if _pattern(m, m in stems).search(text)]
