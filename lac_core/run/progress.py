"""What a long run shows while it works: a line when each part starts and ends, and for long
parts at most every ~10 s how far it is, with an estimate of the time left from the recent pace."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Progress:
    """`say(line)` prints a line; detail=False keeps only the start and end lines (-q)."""

    say: Callable[[str], None] = lambda line: None
    detail: bool = True
    interval: float = 10.0
    label: str = ""
    window: float = 30.0  # the time left is read from the pace over about this many seconds
    _t0: float = 0.0
    _last: float = 0.0
    _seen: list = field(default_factory=list)  # (time, fraction) at each line shown, and the start
    lines: list[str] = field(default_factory=list)  # every start/end line, for xdist reports

    def line(self, text: str) -> None:
        self.lines.append(text)
        self.say(text)

    def start(self, label: str) -> None:
        self.label, self._t0 = label, time.perf_counter()
        self._last, self._seen = self._t0, [(self._t0, 0.0)]
        self.line(f"lac: {label}: started")

    def tick(self, fraction: float) -> None:
        """A long part reports how far it is (0..1); a line shows at most every `interval` s."""
        now = time.perf_counter()
        if not self.detail or not self.label or now - self._last < self.interval or fraction <= 0:
            return
        self._last, spent = now, now - self._t0
        # the pace of the last `window` seconds, not the average since the start: when another
        # job takes the CPU the estimate moves to the new pace at once and then falls, where the
        # average would climb for as long as the part has run
        since, then = next(((t, f) for t, f in reversed(self._seen) if now - t >= self.window),
                           self._seen[0])
        self._seen.append((now, fraction))
        pace = (fraction - then) / (now - since) if fraction > then else fraction / spent
        self.say(f"lac: {self.label}: {fraction:.0%} after {spent:.0f} s, "
                 f"about {(1 - fraction) / pace:.0f} s left")

    def end(self, detail: str) -> None:
        self.line(f"lac: {self.label}: done in {time.perf_counter() - self._t0:.1f} s ({detail})")
        self.label = ""
