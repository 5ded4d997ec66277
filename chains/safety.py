"""Untrusted text in, generated text out: the two guards around every model call.

`guard_untrusted` checks text that reaches a prompt (customer messages, questions,
knowledge-base passages) for instruction-injection patterns and neutralises the
sequences that could break out of the data fence or impersonate a chat role. The
system prompt never changes with the input: flagged text stays data, the flag is
recorded as a security event, and the model is told the data contains instructions
to ignore. Exfiltration has nothing to reach anyway: a prompt only ever holds the
caller's own tenant's data.

`StreamingCensor` masks profanity in streamed output word by word, holding back only
a trailing partial word. The word list is better-profanity's; its own `censor()`
costs ~4 ms per sentence (it expands every word into variants), too slow for a
per-token path, so matching here is a set lookup on normalised words.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import better_profanity
from langchain_core.runnables import RunnableConfig

from chains.context import MissingIdentity, run_context

security_log = logging.getLogger("crm.security")

_INJECTION_PATTERNS = {
    "override_instructions": r"\b(ignore|disregard|forget|override)\b[^.\n]{0,40}\b(instructions?|prompts?|rules|guidelines|context)\b",
    "role_reassignment": r"\b(you are now|from now on you|act as (an?|the) (ai|assistant|system|admin|developer)|pretend (to be|you are))\b",
    "prompt_exfiltration": r"\b(reveal|print|show|repeat|output|leak)\b[^.\n]{0,30}\b(system prompt|your (instructions|prompt|rules)|hidden prompt)\b",
    "cross_tenant_request": r"\b(other|all|every|another)\s+(customers?|tenants?|companies|businesses|accounts?)['’]?s?\s+(data|records|emails?|notes|documents|details)\b",
    "mode_switch": r"\b(developer mode|jailbreak|dan mode|god mode)\b",
    "role_markers": r"(<\|(im_start|im_end|system|assistant|user)\|>|\[/?INST\]|^\s*#{2,}\s*(system|assistant)\b|^\s*(system|assistant)\s*:)",
}
_COMPILED = {name: re.compile(p, re.IGNORECASE | re.MULTILINE) for name, p in _INJECTION_PATTERNS.items()}
# Sequences our prompts use as structure; in untrusted text they are defused.
_FENCE_BREAKERS = re.compile(r"(<<<|>>>|```|<\|[a-z_]+\|>)", re.IGNORECASE)
_INVISIBLE = {"Cf", "Cc"}  # format and control characters (zero-width, bidi overrides…)


@dataclass(frozen=True, slots=True)
class GuardResult:
    text: str
    flags: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        return bool(self.flags)


def _strip_invisible(text: str) -> str:
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in _INVISIBLE)


def guard_untrusted(text: str) -> GuardResult:
    visible = _strip_invisible(text)
    flags = tuple(name for name, pattern in _COMPILED.items() if pattern.search(visible))
    return GuardResult(_FENCE_BREAKERS.sub(lambda m: " ".join(m.group(0)), visible), flags)


def record_security_event(config: RunnableConfig | None, event: dict[str, Any]) -> None:
    """Logs the event and adds it to the run's record (the audit trail reads it)."""
    try:
        context = run_context(config)
    except MissingIdentity:
        security_log.warning("security event outside a run: %s", event)
        return
    security_log.warning("security event: %s", event, extra={"tenant_id": context.identity.tenant_id})
    context.record.security_events.append(event)


def guarded(text: str, *, source: str, config: RunnableConfig | None) -> GuardResult:
    result = guard_untrusted(text)
    if result.flagged:
        record_security_event(config, {"kind": "prompt_injection", "source": source,
                                       "patterns": list(result.flags), "excerpt": text[:200]})
    return result


@lru_cache(maxsize=1)
def _wordlist() -> frozenset[str]:
    path = Path(better_profanity.__file__).parent / "profanity_wordlist.txt"
    return frozenset(line.strip().lower() for line in path.read_text().splitlines() if line.strip())


_WORD = re.compile(r"[A-Za-z0-9@$*!]+(?:'[A-Za-z]+)?")
_LEET = str.maketrans({"@": "a", "$": "s", "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "!": "i"})


def _censor_words(text: str) -> str:
    words = _wordlist()

    def mask(match: re.Match[str]) -> str:
        word = match.group(0)
        normal = word.lower().translate(_LEET).strip("*")
        return "****" if normal in words else word

    return _WORD.sub(mask, text)


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
