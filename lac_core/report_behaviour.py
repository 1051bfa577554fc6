"""Report sections of the behavioural experiments (markers, host and multi-layer injection)."""
from __future__ import annotations


def marker_tables(state) -> list[str]:
    return []


def host_tables(state) -> list[str]:
    return []
