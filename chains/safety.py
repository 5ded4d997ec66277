"""Untrusted text in: the injection guard every field passes before it reaches a prompt.

Customer messages, questions, knowledge passages *and their titles*, and replayed
memory all go through `guarded()`. It looks for instruction-like text on a canonical
form that tricks do not survive: invisible characters removed, NFKC (fullwidth and
compatibility forms), confusable look-alikes mapped to Latin (Cyrillic `о`, Greek `ο`…,
from Unicode's confusables data shipped in `confusable-homoglyphs`), lower case; and on a
"squashed" form of letters only, so split words and spaced letters (`i g n o r e`,
`ig-nore previous`) still match. Sequences that could close the prompt's data fence or
fake a chat role are defused, and an attempt to use them is flagged too.

The system prompt never changes with the input: flagged text stays data, the flag is
recorded as a security event (the run's record, then the audit trail), and the model is
told the data contains instructions to ignore. Exfiltration has nothing to reach anyway:
a prompt only ever holds the caller's own tenant's data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import confusable_homoglyphs
from cachetools import LRUCache, cached
from langchain_core.runnables import RunnableConfig

from chains.context import MissingIdentity, run_context

security_log = logging.getLogger("crm.security")

_INJECTION_PATTERNS = {
    "override_instructions": r"\b(ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}\b(instructions?|prompts?|rules|guidelines|context|directives?)\b",
    "role_reassignment": r"\b(you are now|from now on,? you|act as (an?|the) (ai|assistant|system|admin|developer)|pretend (to be|you are))\b",
    "prompt_exfiltration": r"\b(reveal|print|show|repeat|output|leak)\b[^.\n]{0,30}\b(system prompt|your (instructions|prompt|rules)|hidden prompt)\b",
    "cross_tenant_request": r"\b(other|all|every|another)\s+(customers?|tenants?|companies|businesses|accounts?)['’]?s?\s+(data|records|emails?|notes|documents|details)\b",
    "mode_switch": r"\b(developer mode|jailbreak|dan mode|god mode)\b",
    "role_markers": r"(<\|(im_start|im_end|system|assistant|user)\|>|\[/?inst\]|^\s*#{2,}\s*(system|assistant)\b|^\s*(system|assistant)\s*:)",
    "fake_facts_block": r"```\s*(facts|system|json|instructions)",
}
_COMPILED = {name: re.compile(p, re.MULTILINE) for name, p in _INJECTION_PATTERNS.items()}  # on lower-cased text
# Letters only: what survives "i g n o r e", "ig-nore" and "ign.ore".
_SQUASHED = re.compile(
    r"(ignore|disregard|forget|override)(all|any|the|your|my)*(previous|prior|above|earlier|preceding|system)"
    r"(instructions?|prompts?|rules|guidelines|directives?)"
    r"|(reveal|print|show|leak)(me)?(your|the)(system|hidden)?(prompt|instructions)"
    r"|youarenow(an?|the)?(admin|system|developer|unrestricted|jailbroken)"
    r"|developermode|jailbreak|danmode"
)
# Sequences our prompts use as structure; in untrusted text they are defused.
_FENCE_BREAKERS = re.compile(r"(<<<|>>>|```|<\|[a-z_]+\|>)", re.IGNORECASE)
_NOT_LETTER = re.compile(r"[^a-z]+")


@lru_cache(maxsize=1)
def _invisible() -> re.Pattern[str]:
    """Format and control characters (zero-width, bidi overrides…), but newline and tab."""
    ranges: list[str] = []
    start = previous = -2
    for code in range(sys.maxunicode + 1):
        if code in (9, 10) or unicodedata.category(chr(code)) not in ("Cf", "Cc"):
            continue
        if code != previous + 1:
            if start >= 0:
                ranges.append(_range(start, previous))
            start = code
        previous = code
    ranges.append(_range(start, previous))
    return re.compile("[" + "".join(ranges) + "]")


def _range(start: int, end: int) -> str:
    return re.escape(chr(start)) if start == end else f"{re.escape(chr(start))}-{re.escape(chr(end))}"


@lru_cache(maxsize=1)
def _latin_lookalikes() -> dict[int, str]:
    """Non-ASCII characters that look like an ASCII letter or digit, mapped to it."""
    data = json.loads((Path(confusable_homoglyphs.__file__).parent / "confusables.json").read_text())
    table: dict[int, str] = {}
    for char, homoglyphs in data.items():
        if len(char) != 1 or char.isascii():
            continue
        for homoglyph in homoglyphs:
            target = homoglyph["c"]
            if len(target) == 1 and target.isascii() and target.isalnum():
                table[ord(char)] = target.lower()
                break
    return table


def canonical(text: str) -> str:
    """The form injection detection reads: visible, NFKC, Latin look-alikes, lower case."""
    visible = _invisible().sub("", text)
    return unicodedata.normalize("NFKC", visible).lower().translate(_latin_lookalikes())


def warm_up() -> None:
    canonical("warm up")


@dataclass(frozen=True, slots=True)
class GuardResult:
    text: str
    flags: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        return bool(self.flags)


def guard_untrusted(text: str, *, remembered_for: str | None = None) -> GuardResult:
    """Flags instruction-like text; returns the text visible, NFKC and fence-defused.
    `remembered_for` (a tenant id): the text comes back, and what the patterns found in
    it is kept (`_remembered_flags`)."""
    flags = _flags(text) if remembered_for is None else _remembered_flags(remembered_for, text)
    safe = unicodedata.normalize("NFKC", _invisible().sub("", text))
    return GuardResult(_FENCE_BREAKERS.sub(lambda m: " ".join(m.group(0)), safe), flags)


def _flags(text: str) -> tuple[str, ...]:
    form = canonical(text)
    flags = [name for name, pattern in _COMPILED.items() if pattern.search(form)]
    if _SQUASHED.search(_NOT_LETTER.sub("", form)) and not flags:
        flags.append("obfuscated_instructions")
    if _FENCE_BREAKERS.search(form):
        flags.append("fence_break")
    return tuple(flags)


_DIGEST_KEY = os.urandom(32)  # per process: a digest kept here cannot be checked against a guess elsewhere


def _remembered_key(tenant_id: str, text: str) -> bytes:
    """Per tenant, so a tenant cannot time whether another's text was guarded lately."""
    data = f"{tenant_id}\0{text}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16, key=_DIGEST_KEY).digest()


# The patterns cost about 0.1 ms per KB, and much of what is guarded comes back: a
# customer's past summaries in each analysis of theirs, a tenant's best passages, a
# chat's earlier turns. What they found is kept by a keyed digest, never the text.
@cached(LRUCache(maxsize=16_384), key=_remembered_key, lock=threading.Lock())
def _remembered_flags(tenant_id: str, text: str) -> tuple[str, ...]:
    return _flags(text)


def record_security_event(config: RunnableConfig | None, event: dict[str, Any]) -> None:
    """Logs the event and adds it to the run's record (the audit trail reads it)."""
    try:
        context = run_context(config)
    except MissingIdentity:
        security_log.warning("security event outside a run: %s", event)
        return
    security_log.warning("security event: %s", event, extra={"tenant_id": context.identity.tenant_id})
    context.record.security_events.append(event)


def reported(result: GuardResult, *, original: str, source: str, config: RunnableConfig | None) -> GuardResult:
    """Records a flagged result as a security event of the run; returns it unchanged."""
    if result.flagged:
        # What was flagged and where, not the customer's words: the audit trail outlives a
        # customer's erasure, so it holds ids and names of patterns only.
        record_security_event(config, {"kind": "prompt_injection", "source": source,
                                       "patterns": list(result.flags), "length": len(original)})
    return result


def guarded(text: str, *, source: str, config: RunnableConfig | None, replayed: bool = False) -> GuardResult:
    """`replayed`: the text comes back in later runs (memory, passages), so what the
    guard found in it is remembered for the run's tenant."""
    tenant_id: str | None = None
    if replayed:
        try:
            tenant_id = run_context(config).identity.tenant_id
        except MissingIdentity:
            pass  # guarded all the same, only not remembered
    return reported(guard_untrusted(text, remembered_for=tenant_id), original=text, source=source, config=config)
