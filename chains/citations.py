"""Citations checked while the answer streams: `[n]` must name a passage the model was given.

A model can cite `[4]` with three sources, or a number it saw in a quoted email.
Unknown numbers are removed before the rep reads them and reported with the answer; the
known ones, in order of first use, are the answer's final `sources`. A marker split
over tokens (`[`, `2`, `]`) is held back until it closes, so nothing unchecked ever
reaches the client; so are trailing spaces, which belong to a removed marker.
"""

from __future__ import annotations

import re

_CITATION = re.compile(r"(\s*)\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
# What may still become (the space before) a citation: trailing spaces, "[", "[1", "[1, 2".
_OPEN_TAIL = re.compile(r"\s*(?:\[[\d,\s]{0,12})?$")


def quoted_markers(text: str) -> str:
    """A passage's own bracketed numbers, written `(n)`. In an answer `[n]` cites passage
    n: a document's "see [2]" copied into one (the local answer quotes sentences, a model
    may too) would cite another passage, or be removed and blamed on the model."""
    return _CITATION.sub(lambda match: f"{match.group(1)}({match.group(2)})", text)


class CitationCheck:
    def __init__(self, passages: int) -> None:
        self.passages = passages
        self.cited: list[int] = []
        self.removed: list[int] = []
        self._held = ""

    def _rewrite(self, text: str) -> str:
        def keep_known(match: re.Match[str]) -> str:
            numbers = [int(n) for n in re.findall(r"\d+", match.group(2))]
            known = [n for n in numbers if 1 <= n <= self.passages]
            self.removed.extend(n for n in numbers if n not in known)
            for n in known:
                if n not in self.cited:
                    self.cited.append(n)
            if not known:
                return ""  # with the space before it: "audit [7]." reads "audit."
            return f"{match.group(1)}[{', '.join(str(n) for n in known)}]"

        return _CITATION.sub(keep_known, text)

    def feed(self, token: str) -> str:
        """The part of the answer so far that is safe to send."""
        text = self._held + token
        tail = _OPEN_TAIL.search(text)
        self._held = tail.group(0) if tail else ""
        return self._rewrite(text[: len(text) - len(self._held)])

    def close(self) -> str:
        """What was held back at the end (an unclosed `[12` is plain text)."""
        rest, self._held = self._held, ""
        return self._rewrite(rest)
