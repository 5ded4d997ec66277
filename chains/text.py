"""Plain-text utilities shared by the chains and the stores that feed them."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text) if len(part.strip()) > 2]


def clip(sentence: str, limit: int = 220) -> str:
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


# The real-time path analyses at most this much of a message locally: the embedded
# analysis grows faster than linearly with length (VADER: 12 ms at 3 KB, 415 ms at
# 20 KB). Longer messages are read from their opening and their close, where people
# state what they want; an LLM, when one serves, still receives the whole text.
EXCERPT_HEAD_CHARS = 2_000
EXCERPT_TAIL_CHARS = 1_000


def excerpt(text: str, head: int = EXCERPT_HEAD_CHARS, tail: int = EXCERPT_TAIL_CHARS) -> tuple[str, bool]:
    """The part of `text` the local analysis reads, and whether that is not all of it."""
    if len(text) <= head + tail:
        return text, False
    return f"{text[:head].rstrip()} … {text[-tail:].lstrip()}", True
