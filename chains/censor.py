"""Generated text out: profanity masked in streamed output, word by word.

The word list is better-profanity's; its own `censor()` costs ~4 ms per sentence (it
expands every word into variants), too slow for a per-token path, so matching here is a
set lookup on normalised words, holding back only a trailing partial word.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from functools import lru_cache
from pathlib import Path

import better_profanity


@lru_cache(maxsize=1)
def _wordlist() -> frozenset[str]:
    path = Path(better_profanity.__file__).parent / "profanity_wordlist.txt"
    return frozenset(line.strip().lower() for line in path.read_text().splitlines() if line.strip())


_WORD = re.compile(r"[A-Za-z0-9@$*!]+(?:'[A-Za-z]+)?")
_LEET = str.maketrans({"@": "a", "$": "s", "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "!": "i"})


# A word's normal form (`_WORD` matches ASCII only: lower case is A-Z to a-z), also taken
# of a whole run of words at once, which `_WORD` finds in the text itself: mapped first, a
# look-alike digit after an apostrophe would become a letter and join the word.
_NORMAL = {**{c: chr(c + 32) for c in range(ord("A"), ord("Z") + 1)}, **_LEET}


def _censor_words(text: str) -> str:
    words = _wordlist()
    found = " ".join(_WORD.findall(text)).translate(_NORMAL)
    if "*" not in found and words.isdisjoint(found.split(" ")):
        return text  # nothing listed, the common case: no Python call per word

    def mask(match: re.Match[str]) -> str:
        word = match.group(0)
        normal = word.translate(_NORMAL).strip("*")
        return "****" if normal in words else word

    return _WORD.sub(mask, text)


def censor_text(text: str) -> str:
    """A whole text at once (list items, action descriptions)."""
    return _censor_words(text)


class StreamingCensor:
    """Masks listed words across token boundaries, holding back only a partial word."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, token: str) -> str:
        text = self._pending + token
        cut = max(text.rfind(" "), text.rfind("\n"))
        if cut < 0:
            self._pending = text
            return ""
        self._pending = text[cut + 1 :]
        return _censor_words(text[: cut + 1])

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return _censor_words(text)


async def censored(tokens: AsyncIterator[str]) -> AsyncIterator[str]:
    censor = StreamingCensor()
    async for token in tokens:
        out = censor.feed(token)
        if out:
            yield out
    tail = censor.flush()
    if tail:
        yield tail
