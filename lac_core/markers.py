"""Persona-marker matching (experiment 2), plain Python."""
# Case-insensitive. A marker containing a space or hyphen matches as a substring; a single word
# matches on word boundaries; a stem (fixtures/claims.yaml, markers.stems: the paper's lawyer list
# has `indemnif`) matches at a word start with any ending (indemnify, indemnification).
from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=None)
def _pattern(marker: str, stem: bool) -> re.Pattern:
    text = re.escape(marker)
    if " " in marker or "-" in marker:
        return re.compile(text, re.IGNORECASE)
    if stem:
        return re.compile(rf"\b{text}\w*", re.IGNORECASE)
    return re.compile(rf"\b{text}\b", re.IGNORECASE)


def hits(text: str, markers, stems=()) -> list[str]:
    """The distinct markers of the list that occur in the text, in list order."""
    stems = set(stems)
    return [m for m in dict.fromkeys(markers) if _pattern(m, m in stems).search(text)]
