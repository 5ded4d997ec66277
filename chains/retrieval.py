"""Hybrid retrieval over one tenant's knowledge: BM25 (`bm25s`) and embeddings, fused.

Why both: reps ask with the document's rare words ("dkim", "okta", "mailcrest"), which
BM25 finds and a 256-d static embedding blurs, and with paraphrases ("bail early" for
"early termination"), which embeddings find and BM25 misses. Reciprocal-rank fusion
combines them without calibrating one score against the other.

An index holds every chunk of one tenant, built once from the stored vectors (nothing
is re-embedded) and reused until the tenant's knowledge changes; a question scores
only the chunks in its scope (the asked customer's and the tenant-wide ones) with a
sparse BM25 lookup and one matrix-vector product, instead of loading every chunk
from the database.

A customer's name in a question ("copper kettle rush fee") says whose documents to look
in, which the scope already does, not what to find in them; left in, it drew the search
and the answer to any sentence of the customer's own documents that names the customer
("Client: Copper Kettle Bakery LLC") over the tenant's policy that answers. So the words
that name the customer are taken out of what is searched for (`subject_words`, `focused`).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain

import bm25s
import numpy as np
import Stemmer

from chains.embeddings import embed, embed_one
from chains.ports import Found, Passage
from chains.text import split_sentences

# Reciprocal-rank fusion constant: the usual 60 flattens the head too much for the
# handful of chunks a customer has; 20 keeps a clear first place first.
RRF_K = 20
# A follow-up ("and when?") is searched with the question it follows at this weight.
EARLIER_WEIGHT = 0.5
# A customer's own document outranks a tenant-wide one that scores alike: where they
# disagree (a contract's notice period against the general policy) the customer's wins.
OWN_DOCUMENT_BOOST = 1.15
CHUNK_MAX_CHARS = 700
_TOKEN = r"(?u)\b\w+\b"
_MEANINGLESS = re.compile(r"^\d$")
_WORD = re.compile(r"[\w'\u2019-]+")


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


# How reps phrase a question, not what they ask about: "how much notice do they need
# to give" is about notice. Stemmed, like the tokens they are compared with.
_QUESTION_FRAMING = frozenset(
    "what whi why when who whom whose how which where did doe does do done is are was were be been "
    "much mani need give gave get got ever still want like know tell say said pleas also would could "
    "can will thing anyth someth us we our they them their there".split()
)


# Shorthand that reps and notes write for the same word a document spells out (or the
# other way round): "appt" and "appointments", "Sept." and "September", "mgmt fee" and
# "management fee". Each side is rewritten to one spelling before stemming, so they match.
# Left out on purpose: shorthand that is also a common word or name in this domain ("HR",
# "MO" for Missouri, "inv" for inventory); "mo" counts only after a slash ("$349/mo").
_SHORTHAND = {
    "january": "jan", "february": "feb", "march": "mar", "april": "apr", "june": "jun", "july": "jul",
    "august": "aug", "september": "sep", "sept": "sep", "october": "oct", "november": "nov",
    "december": "dec", "monday": "mon", "tuesday": "tue", "tues": "tue", "wednesday": "wed",
    "thursday": "thu", "thur": "thu", "thurs": "thu", "friday": "fri", "saturday": "sat", "sunday": "sun",
    "appt": "appointment", "appts": "appointments", "mgmt": "management", "mgr": "manager",
    "mgrs": "managers", "acct": "account", "accts": "accounts", "ppl": "people", "msg": "message",
    "msgs": "messages", "yr": "year", "yrs": "years", "mos": "months", "hrs": "hours", "mins": "minutes",
    "wk": "week", "wks": "weeks", "info": "information", "approx": "approximately", "cust": "customer",
    "custs": "customers", "dept": "department", "req'd": "required", "reqs": "requirements",
    "unsub": "unsubscribe", "unsubs": "unsubscribes", "subs": "subscribers", "biz": "business",
    "w/": "with", "w/o": "without", "b/c": "because", "qty": "quantity", "addl": "additional",
    "add'l": "additional",
}
# Whole words only, and not inside an e-mail address or a domain ("info@", "x.info").
_SHORTHAND_WORD = re.compile(
    r"(?<![\w'@.])(" + "|".join(sorted(map(re.escape, _SHORTHAND), key=len, reverse=True))
    + r")(?![\w@])(?!'(?!s\b))",
    re.IGNORECASE,
)
_PER_MONTH = re.compile(r"(?<=\w)/mo\b", re.IGNORECASE)


def _spelled_out(text: str) -> str:
    # Matching ignores case beyond ASCII too ("İNFO"): what does not lower-case to a key stays.
    text = _PER_MONTH.sub("/month", text.replace("\u2019", "'"))
    return _SHORTHAND_WORD.sub(lambda match: _SHORTHAND.get(match.group(1).lower(), match.group(1)), text)


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased, shorthand spelled out, English stop words and question framing
    removed, Snowball-stemmed word lists. Single letters and single digits go too ("p1"
    stays, "1." does not): they match everything."""
    tokens = bm25s.tokenize(
        [_spelled_out(text) for text in texts], token_pattern=_TOKEN, stopwords="en", stemmer=_stemmer(),
        return_ids=False, show_progress=False,
    )
    return [
        [t for t in words if len(t) > 1 and not _MEANINGLESS.match(t) and t not in _QUESTION_FRAMING]
        for words in tokens
    ]


def chunk_text(text: str, max_chars: int = CHUNK_MAX_CHARS) -> list[str]:
    """Sentence-aligned chunks, so a cited passage never starts mid-sentence. A line
    break stays one: a header or a "Label: value" line ends without a period, and run
    into the next line it would make one sentence of two facts."""
    chunks: list[str] = []
    current = ""
    lines = [split_sentences(line) for line in text.splitlines()]
    if not any(lines):
        lines = [[text]]
    for sentences in lines:
        for index, sentence in enumerate(sentences):
            separator = " " if index else "\n"
            if current and len(current) + len(sentence) + 1 > max_chars:
                chunks.append(current)
                current = sentence
            else:
                current = f"{current}{separator}{sentence}" if current else sentence
    if current.strip():
        chunks.append(current)
    return chunks


def embedded_chunks(title: str, text: str) -> tuple[list[str], np.ndarray]:
    """A document's chunks and their vectors. The title is embedded with each chunk (it
    says what the chunk is about) but not stored in it, so answers never quote a bare
    title as a fact."""
    chunks = chunk_text(text)
    return chunks, embed([f"{title}. {chunk}" for chunk in chunks])


def focused(text: str, subject: frozenset[str]) -> str:
    """`text` without the words that name the customer (`subject_words`), unless nothing
    it asks would be left: "who is Rosa" stays as it is."""
    if not subject:
        return text
    matches = list(_WORD.finditer(text))
    tokens = tokenize([match.group() for match in matches])
    naming = [bool(words) and set(words) <= subject for words in tokens]
    if not any(naming) or all(names or not words for names, words in zip(naming, tokens, strict=True)):
        return text
    kept, start = [], 0
    for match, names in zip(matches, naming, strict=True):
        if names:
            kept.append(text[start:match.start()])
            start = match.end()
    kept.append(text[start:])
    return " ".join("".join(kept).split())


def subject_words(
    chunks: Sequence[IndexedChunk], words: Sequence[list[str]], capitalised: Sequence[list[str]],
    titles: Mapping[str, tuple[list[str], list[str]]],
) -> dict[str, frozenset[str]]:
    """Per customer, the words that name it: written with a capital more often than not,
    in at least half of its documents (two at least), and in no document of another
    customer or of the whole tenant. A name passes all three, a contact's name too; the
    words of what a customer's documents are about rarely do (the month, "Instagram",
    "Agreement" are in other customers' documents too). Chosen by reading the word lists
    of two training sets and the conflicts dev set; README, "The customer's own against a
    tenant policy" says what it changed.

    `words` are each chunk's words, its document's title included; `capitalised`, those
    of the chunk's text written with a capital; `titles`, each title's words and those
    written with a capital. A title counts once per document, not once per chunk: a long
    "Hourly Rate Schedule" would otherwise make "rate" a name.

    With no document of another owner there is nothing a name could draw the search away
    from, and every word would pass: none is taken out then."""
    by_owner: defaultdict[str, list[int]] = defaultdict(list)
    for index, chunk in enumerate(chunks):
        by_owner[chunk.customer_id or ""].append(index)
    if len(by_owner) < 2:
        return {}
    owners: Counter[str] = Counter()  # how many owners' documents hold each word
    for indexes in by_owner.values():
        owners.update(set().union(*(words[i] for i in indexes)))
    found: dict[str, frozenset[str]] = {}
    for customer, indexes in by_owner.items():
        if not customer:
            continue
        documents: defaultdict[str, set[str]] = defaultdict(set)
        for i in indexes:
            documents[chunks[i].document_id].update(words[i])
        spread: Counter[str] = Counter()
        for tokens in documents.values():
            spread.update(tokens)
        needed = max(2, math.ceil(len(documents) / 2))
        candidates = [token for token, count in spread.items() if count >= needed and owners[token] == 1]
        if not candidates:
            found[customer] = frozenset()
            continue
        # Counted in C over the customer's chunks, each title once per document.
        once = {chunks[i].document_id: chunks[i].title for i in indexes}.values()
        written = Counter(chain.from_iterable(words[i] for i in indexes))
        written.subtract(Counter(chain.from_iterable(titles[chunks[i].title][0] for i in indexes)))
        written.update(chain.from_iterable(titles[title][0] for title in once))
        capital = Counter(chain.from_iterable(capitalised[i] for i in indexes))
        capital.update(chain.from_iterable(titles[title][1] for title in once))
        found[customer] = frozenset(token for token in candidates if 2 * capital[token] > max(written[token], 0))
    return found


def _capitalised(texts: Iterable[str]) -> list[list[str]]:
    """Per text, its words written with a capital letter ('Copper' quoted too). Each
    distinct word is tokenized once: names recur, and a tenant's first index holds them
    all (tokenizing every text again took 40% more time)."""
    written = [[word for word in _WORD.findall(text) if word.lstrip("'\u2019-")[:1].isupper()] for text in texts]
    distinct = sorted({word for words in written for word in words})
    tokens = dict(zip(distinct, tokenize(distinct), strict=True))
    return [[token for word in words for token in tokens[word]] for words in written]


@dataclass(frozen=True, slots=True)
class IndexedChunk:
    document_id: str
    customer_id: str | None
    title: str
    text: str


class RetrievalIndex:
    """One tenant's chunks, searchable by BM25 and by embedding; immutable once built."""

    def __init__(
        self, chunks: Sequence[IndexedChunk], vectors: np.ndarray, *, previous: RetrievalIndex | None = None
    ) -> None:
        """`previous`, the index this one replaces, lends the words of chunks that did
        not change: a write re-tokenizes only what it wrote."""
        self.chunks = list(chunks)
        self.vectors = vectors.reshape(len(self.chunks), -1) if self.chunks else vectors
        self.customers = np.array([c.customer_id or "" for c in self.chunks], dtype=object)
        texts = [f"{c.title}. {c.text}" for c in self.chunks]
        known = previous.words if previous is not None else {}
        known_capitals = previous.capitals if previous is not None else {}
        fresh = [text for text in dict.fromkeys(texts) if text not in known]
        self.words = {text: known[text] for text in texts if text in known}
        self.words.update(zip(fresh, tokenize(fresh), strict=True))
        self.capitals = {text: known_capitals[text] for text in texts if text in known_capitals}
        # Of the chunk's text alone: `subject_words` counts a title once per document.
        chunk_texts = {text: chunk.text for text, chunk in zip(texts, self.chunks, strict=True)}
        self.capitals.update(zip(fresh, _capitalised(chunk_texts[text] for text in fresh), strict=True))
        known_titles = previous.titles if previous is not None else {}
        fresh_titles = [title for title in dict.fromkeys(c.title for c in self.chunks) if title not in known_titles]
        self.titles = {c.title: known_titles[c.title] for c in self.chunks if c.title in known_titles}
        self.titles.update(zip(fresh_titles, zip(tokenize(fresh_titles), _capitalised(fresh_titles)), strict=True))
        corpus = [self.words[text] for text in texts]
        self.subjects = subject_words(self.chunks, corpus, [self.capitals[text] for text in texts], self.titles)
        self.bm25 = bm25s.BM25()
        # bm25s cannot index a corpus without a single word ("ok.", "a b"): such a
        # tenant is searched by embeddings alone.
        self.lexical = any(corpus)
        if self.lexical:
            self.bm25.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return len(self.chunks)

    def _scope(self, customer_id: str | None) -> np.ndarray:
        if customer_id is None:
            return np.ones(len(self.chunks), dtype=bool)
        return (self.customers == customer_id) | (self.customers == "")

    def search(
        self, query: str, *, customer_id: str | None, k: int, earlier: str | None = None
    ) -> list[Passage]:
        return self.find(query, customer_id=customer_id, k=k, earlier=earlier).passages

    def find(
        self, query: str, *, customer_id: str | None, k: int, earlier: str | None = None
    ) -> Found:
        """The `k` best chunks in scope for `query` and, at `EARLIER_WEIGHT`, the
        question it follows, fused by reciprocal rank; both searched without the words
        that name the customer."""
        subject = self.subjects.get(customer_id or "", frozenset())
        queries = [(query, 1.0)] + ([(earlier, EARLIER_WEIGHT)] if earlier else [])
        scope = self._scope(customer_id) if self.chunks else np.zeros(0, dtype=bool)
        candidates = np.flatnonzero(scope)
        if candidates.size == 0:
            return Found([], subject)
        fused = np.zeros(len(self.chunks))
        # Reciprocal ranks tie often (first by words and second by meaning scores as much
        # as the reverse): the tie goes to the chunk whose scores are nearer each list's best.
        strength = np.zeros(len(self.chunks))
        similarity = np.zeros(len(self.chunks))
        in_scope = self.vectors[candidates]  # a copy: taken once, for every text searched
        for position, (asked, weight) in enumerate(queries):
            text = focused(asked, subject)
            words = tokenize([text])[0]
            lexical = self.bm25.get_scores(words) if words and self.lexical else np.zeros(len(self.chunks))
            semantic = in_scope @ embed_one(text)
            # Reported: how near the conversation the chunk is, by the question as asked
            # (what is left of "who signed for juniper florist" is near nothing by meaning).
            # A follow-up ("what was that for") names almost nothing itself, so the
            # question it follows counts, at its weight.
            near = semantic if text == asked else in_scope @ embed_one(asked)
            similarity[candidates] = near if position == 0 else np.maximum(similarity[candidates], weight * near)
            for scores in (lexical[candidates], semantic):
                order = np.argsort(-scores, kind="stable")
                ranks = np.empty(order.size)
                ranks[order] = np.arange(1, order.size + 1)
                # A chunk without any query word gets no lexical vote at all.
                votes = weight / (RRF_K + ranks)
                if scores is not semantic:
                    votes[scores <= 0] = 0.0
                fused[candidates] += votes
                if (top := scores.max()) > 0:
                    strength[candidates] += weight * np.clip(scores, 0.0, None) / top
        own = (self.customers[candidates] != "") & (customer_id is not None)
        fused[candidates[own]] *= OWN_DOCUMENT_BOOST
        ranked = candidates[np.lexsort((-strength[candidates], -fused[candidates]))]
        best: list[int] = []
        seen: set[str] = set()
        for i in ranked:
            # A document uploaded twice would fill two of the k places with one text, and
            # the answer would say it twice. Only the same text (case and spacing aside).
            text = " ".join(self.chunks[i].text.lower().split())
            if text not in seen:
                seen.add(text)
                best.append(int(i))
                if len(best) == k:
                    break
        return Found([
            Passage(
                document_id=self.chunks[i].document_id,
                customer_id=self.chunks[i].customer_id,
                title=self.chunks[i].title,
                text=self.chunks[i].text,
                score=round(float(similarity[i]), 4),
            )
            for i in best
        ], subject)
