"""Profanity in generated text: every word of the list is masked, in any case, with
look-alike digits and symbols, next to any character, streamed in any split; nothing
else changes."""

from __future__ import annotations

import re
from pathlib import Path

import better_profanity
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chains.censor import StreamingCensor, censor_text

WORDLIST = frozenset(line.strip().lower() for line in
                     (Path(better_profanity.__file__).parent / "profanity_wordlist.txt").read_text().splitlines())
LISTED = ["shit", "bastard", "crap"]
LOOKALIKES = {"a": "@4", "s": "$5", "o": "0", "i": "1!", "e": "3", "t": "7"}


@st.composite
def disguised(draw: st.DrawFn) -> str:
    word = draw(st.sampled_from(LISTED))
    return "".join(draw(st.sampled_from([c, c.upper(), *LOOKALIKES.get(c, "")])) for c in word)


PIECES = st.one_of(
    disguised(),
    st.sampled_from(["export", "vendor", "Shitake", "crappy", "it's", "K", "\u212a", "\u0130", "ß", "**"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=3),
)
SEPARATORS = st.sampled_from([" ", "\n", " ", "", ", ", "-"])


@settings(max_examples=400, deadline=None)
# Characters whose lower case is ASCII (the Kelvin sign) or longer (dotted I), and stars.
@example(pieces=[("\u212a", ""), ("shit", " "), ("\u0130", ""), ("cr@p", "")], cuts=[3])
@example(pieces=[("clean ", "**"), ("5hit", "**")], cuts=[])
@example(pieces=[("crap'5", " "), ("it's", "")], cuts=[])  # a look-alike is no letter after an apostrophe
@given(pieces=st.lists(st.tuples(PIECES, SEPARATORS), max_size=12), cuts=st.lists(st.integers(0, 200), max_size=20))
def test_listed_words_are_masked_and_nothing_else_changes(pieces: list[tuple[str, str]], cuts: list[int]) -> None:
    text = "".join(piece + separator for piece, separator in pieces)
    # The definition: each word (letters, digits and the look-alike symbols, an
    # apostrophe suffix) whose lower-case, look-alike-mapped form, stars stripped, is listed.
    leet = str.maketrans("@4$5017!3", "aassoitie")
    expected = re.sub(r"[A-Za-z0-9@$*!]+(?:'[A-Za-z]+)?",
                      lambda m: "****" if m.group(0).lower().translate(leet).strip("*") in WORDLIST else m.group(0),
                      text)
    assert censor_text(text) == expected

    points = sorted({cut % (len(text) + 1) for cut in cuts} | {0, len(text)})
    censor = StreamingCensor()
    streamed = "".join(censor.feed(text[a:b]) for a, b in zip(points, points[1:], strict=False)) + censor.flush()
    assert streamed == expected
