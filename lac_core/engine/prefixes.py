"""Which leading tokens of a batch of prompts to compute once: the prefix every prompt shares
(the chat template's head), then, where it saves work, one segment per group of prompts (the
"As <persona>," that every task of one persona repeats)."""
# A batch runs left-padded to its longest row, so a pass costs rows x width positions. After the
# common prefix, a second level runs each group's segment once (groups x the longest segment) and
# each row's rest after it (rows x what is left of the width). Groups come from the prompts'
# trie: start from the branches after the common prefix and split, one at a time, the group
# holding the longest rest; the cheapest layout seen wins, if it beats one level by SAVING. A
# layout keeps the widest prompt's columns (each row's rest padded to width - common - the
# longest segment), so a kept state's footprint, which `Engine.generate` budgets, and the columns
# that row chunks of one generation share stay what one level gives; a layout whose rests do not
# fit is not taken.
from __future__ import annotations

import os
from dataclasses import dataclass

SAVING = 0.9  # a second level must cost at most this share of one level's positions (it adds a
# call and a copy of every row's cached columns)


@dataclass(frozen=True)
class Layout:
    """`common` leading tokens every prompt shares; then, when `groups` is not empty, each
    group's next `segment` tokens shared by its `rows`."""

    common: int
    groups: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (segment length, rows)

    def positions(self, lengths: list[int]) -> int | None:
        """Positions the passes compute, every row's rest padded so that the columns stay the
        widest prompt's (None if a rest does not fit)."""
        width = max(lengths)
        if not self.groups:
            return self.common + len(lengths) * (width - self.common)
        seg = max(s for s, _ in self.groups)
        if any(lengths[r] - s > width - seg for s, rows in self.groups for r in rows):
            return None
        return self.common + len(self.groups) * seg + len(lengths) * (width - self.common - seg)

    def segment_of(self) -> dict[int, tuple[int, int]]:
        """Row -> (its group's index, its segment length)."""
        return {r: (g, s) for g, (s, rows) in enumerate(self.groups) for r in rows}


def layout(prompts: list[list[int]], kept: int) -> Layout:
    """The cheapest sharing of `prompts` whose last `kept` tokens stay each row's own."""
    lengths = [len(p) for p in prompts]
    common = max(0, min(len(os.path.commonprefix(prompts)), min(lengths) - kept))
    one = Layout(common)
    if common == 0 or len(prompts) < 3:
        return one

    def group(rows: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        shared = len(os.path.commonprefix([prompts[r] for r in rows]))
        return max(0, min(shared, min(lengths[r] for r in rows) - kept) - common), rows

    def split(rows: tuple[int, ...], at: int) -> list[tuple[int, tuple[int, ...]]]:
        by: dict[int | None, list[int]] = {}
        for r in rows:
            by.setdefault(prompts[r][at] if at < lengths[r] else None, []).append(r)
        return [group(tuple(rs)) for rs in by.values()]

    groups = split(tuple(range(len(prompts))), common)
    best, best_cost = one, one.positions(lengths)
    while True:
        candidate = Layout(common, tuple(groups))
        cost = candidate.positions(lengths)
        if cost is not None and cost < best_cost:
            best, best_cost = candidate, cost
        # the group holding the longest rest, split at the end of its shared segment
        g = max(range(len(groups)), key=lambda k: max(lengths[r] - groups[k][0]
                                                      for r in groups[k][1]))
        s, rows = groups[g]
        children = split(rows, common + s) if len(rows) > 1 else []
        if len(children) < 2:
            break
        groups = groups[:g] + children + groups[g + 1:]
    return best if best.groups and best_cost <= SAVING * one.positions(lengths) else one
