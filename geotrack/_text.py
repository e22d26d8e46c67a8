"""Small helpers for the words of messages people read."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 position``, ``2 positions``, ``0 positions``; ``nouns`` for irregular plurals."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
