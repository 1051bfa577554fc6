"""Persona-marker matching: any marker can match (`c++`, `(x`, an emoji), and for markers that
start and end with word characters it is exactly the paper's `\\b...\\b` matching."""
import re

import pytest
import yaml

from lac_core.verdicts import paper
from lac_core.protocol.grids import GRID_DIR
from lac_core.protocol.markers import hits
from lac_core.run.settings import FIXTURES
from lac_core.verdicts.thresholds import load_thresholds

STEMS = load_thresholds(FIXTURES / "claims.yaml").markers.stems


def _old_hits(text, markers, stems=()):
    """The matcher as it was (word boundaries on both sides), the reference for shipped lists."""
    def pattern(m):
        t = re.escape(m)
        if " " in m or "-" in m:
            return re.compile(t, re.IGNORECASE)
        return re.compile(rf"\b{t}\w*" if m in stems else rf"\b{t}\b", re.IGNORECASE)
    return [m for m in dict.fromkeys(markers) if pattern(m).search(text)]


def test_shipped_marker_lists_match_as_before_on_the_papers_96_texts():
    """Every marker list of markers.yaml and example.yaml, on all 96 published generations:
    hit for hit the same as the old matcher (none of those markers has a non-word edge)."""
    texts = [v["text"] for conds in paper.marker_data()["results"].values() for v in conds.values()]
    lists = [words for name in ("markers", "example")
             for words in yaml.safe_load((GRID_DIR / f"{name}.yaml").read_text())["markers"].values()]
    assert len(texts) == 96 and len(lists) == 11
    compared = found = 0
    for text in texts:
        for words in lists:
            new = hits(text, words, STEMS)
            assert new == _old_hits(text, words, STEMS), (text[:60], words)
            compared, found = compared + 1, found + len(new)
    assert compared == 96 * 11 and found > 100  # the lists do hit these texts


@pytest.mark.parametrize("marker, inside, outside", [
    ("c++", ["I write C++ daily.", "c++", "(c++)"], ["abc++ is not it", "I write c+ code"]),
    ("(x", ["see (x) here", "f(x)", "(X"], ["see (xy) here", "(x_1"]),
    ("\U0001f3f4\u200d\u2620\ufe0f", ["Arr \U0001f3f4\u200d\u2620\ufe0f!", "ship\U0001f3f4\u200d\u2620\ufe0f"],
     ["Arr \U0001f3f4 alone", "\u2620\ufe0f"]),
    ("etc.", ["bread, tax, etc. and so on", "ETC."], ["fetc. is not it", "etc is not it"]),
])
def test_markers_with_non_word_edges_match(marker, inside, outside):
    """An edge needs a non-word neighbour only where the marker's own character is a word
    character: `\\b` before `c` of `c++` still holds, after the last `+` it never could."""
    for text in inside:
        assert hits(text, [marker]) == [marker], text
    for text in outside:
        assert hits(text, [marker]) == [], text


def test_a_stem_with_a_non_word_start_matches_at_any_start():
    assert hits("Tag it #hashtags now", ["#hash"], ["#hash"]) == ["#hash"]
    assert hits("They must indemnify us.", ["indemnif"], ["indemnif"]) == ["indemnif"]
    assert hits("Not reindemnified.", ["indemnif"], ["indemnif"]) == []
