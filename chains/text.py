"""Plain-text utilities shared by the chains and the stores that feed them."""

from __future__ import annotations

import re

# Words after which a period does not end a sentence ("Bright Bakery Co. renews",
# "Dr. Patel", "approx. 40 seats", "Jan. 5"). Lower-cased, without the period.
_ABBREVIATIONS = frozenset(
    """co corp inc ltd llc plc bros dept est approx appt apt assn ave blvd rd st no nos vs etc al
    mr mrs ms dr prof sr jr st mt ft fig ref vol pp ed eds rev gen col capt lt sgt cmdr gov sen rep
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun
    e.g i.e a.m p.m u.s u.k e.u u.s.a ph.d m.d b.a m.a d.c cf ca viz incl excl min max avg hr hrs
    mins sec secs qty pcs pkg tel ext attn dist div intl natl""".split()
)
# A candidate boundary: end punctuation, optional closing quotes/brackets, then space.
_BOUNDARY = re.compile(r"[.!?…]+[\"')\]]*\s+")
# Only a word this short can be an abbreviation or an initial, so only this much before a
# period is read. Reading all of it (the whole sentence so far, searched for its last
# word) made a long word followed by thousands of periods quadratic, then cubic: one
# 99 KB document held the event loop for hours.
_ABBREVIATION_WINDOW = 40


def _is_abbreviation(line: str, start: int, end: int, punctuation: str) -> bool:
    """Whether the word of `line[start:end]` just before a period is an abbreviation."""
    if punctuation != ".":
        return False
    window = line[max(start, end - _ABBREVIATION_WINDOW):end]
    if not window or window[-1].isspace():
        return False  # no word right before the period
    words = window.split()
    if len(words) == 1 and end - start > len(window) and not window[0].isspace():
        return False  # a word at least as long as the window: longer than any abbreviation
    token = words[-1].lstrip("(\"'[").lower()
    if token in _ABBREVIATIONS:
        return True
    if len(token) == 1 and token.isalpha():
        return True  # an initial: "J. Smith"
    return bool(re.fullmatch(r"(?:[a-z]\.)+[a-z]", token))  # "u.s", "e.g" written without the last dot


def split_sentences(text: str) -> list[str]:
    """Sentences that survive abbreviations, initials, amounts, versions and URLs.

    A break is taken at `.`, `!`, `?` or `…` followed by whitespace, unless the word
    before a `.` is a known abbreviation or an initial, or the next character is lower
    case (a sentence goes on); line breaks always separate.
    """
    sentences: list[str] = []
    for line in text.splitlines():
        start = 0
        for match in _BOUNDARY.finditer(line):
            end = match.end()
            following = line[end:end + 1]
            punctuation = match.group(0).strip()[:1]
            if following and following.islower():
                continue
            if _is_abbreviation(line, start, match.start(), punctuation):
                continue
            sentences.append(line[start:end].strip())
            start = end
        sentences.append(line[start:].strip())
    return [sentence for sentence in sentences if len(sentence) > 2]


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


_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(text: str) -> bool:
    """A Python string can hold half of a UTF-16 pair (from a `\\ud83d` JSON escape), which
    UTF-8, pydantic's JSON parser and orjson all refuse."""
    return _SURROGATE.search(text) is not None


class WholeCharacters:
    """A stream of text pieces, with every character whole.

    A provider (or a gateway that slices strings in UTF-16, as JavaScript does) can split
    a character outside the BMP, an emoji, across two chunks, each half sent as its own
    `\\ud83d` escape. Python keeps the halves as two lone surrogates, which neither
    pydantic's JSON parser nor orjson accepts, so the analysis chain failed on a
    summary with an emoji in it. Halves are joined, a first half waits for the next
    piece, and a half without its pair becomes U+FFFD."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        if not self._held and not has_lone_surrogate(piece):
            return piece  # nearly every piece
        text, self._held = self._held + piece, ""
        if text and "\ud800" <= text[-1] <= "\udbff":
            text, self._held = text[:-1], text[-1]
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "\ufffd" if held else ""
