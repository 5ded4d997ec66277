"""A customer's recent history, as it bears on the message being analysed.

The chain reads the customer's last interactions (tenant-scoped, `chains.ports`) and
derives what a rep would want to know: how many issues they raised this week, whether
their mood is getting worse, what they said recently. A third complaint in a week is
more urgent than a first; a worsening trend is a reason to call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chains.schemas import Urgency

ISSUE_INTENTS = frozenset({"complaint", "support_request", "cancellation_risk"})
_LEVELS: tuple[Urgency, ...] = ("low", "medium", "high")
PROMPT_HISTORY = 5  # past interactions an LLM is told about


@dataclass(frozen=True, slots=True)
class PastInteraction:
    created_at: datetime
    channel: str
    sentiment_label: str
    sentiment_score: float
    intent: str
    urgency: str
    automated: bool
    summary: str


@dataclass(frozen=True)
class CustomerContext:
    tier: str = "standard"
    lead_score: int | None = None
    recent: list[PastInteraction] = field(default_factory=list)  # newest first, automated ones left out
    issues_7d: int = 0  # complaints, support requests and churn signals in the last 7 days
    open_issues: int = 0  # the same in the last 14 days
    sentiment_change: float = 0.0  # this message's score minus the recent average (negative: worse)

    @property
    def trend(self) -> str:
        if not self.recent:
            return "unknown"
        if self.sentiment_change <= -0.35:
            return "worsening"
        if self.sentiment_change >= 0.35:
            return "improving"
        return "steady"

    def public(self) -> dict[str, Any]:
        """The `customer_context` field of the analysis."""
        return {
            "recent_interactions": len(self.recent),
            "issues_last_7_days": self.issues_7d,
            "open_issues": self.open_issues,
            "sentiment_trend": self.trend,
            "sentiment_change": round(self.sentiment_change, 3),
            "tier": self.tier,
            "lead_score": self.lead_score,
        }

    @property
    def prompt_history(self) -> list[PastInteraction]:
        """The past interactions an LLM is told about."""
        return self.recent[:PROMPT_HISTORY]

    def prompt_lines(self, summaries: Sequence[str]) -> str:
        """What an LLM is told about the customer's recent history: `prompt_history`
        with `summaries`, theirs once guarded (`chains.safety`), in order."""
        if not self.recent:
            return "No earlier interactions on record."
        lines = [
            f"- {past.created_at:%Y-%m-%d} {past.channel}: {past.intent}, {past.sentiment_label}, "
            f"{past.urgency} urgency. {summary}"
            for past, summary in zip(self.prompt_history, summaries, strict=True)
        ]
        return (f"{self.issues_7d} issue(s) in the last 7 days; sentiment trend {self.trend}.\n"
                + "\n".join(lines))


def build_context(
    history: list[PastInteraction], *, now: datetime, current_score: float, tier: str, lead_score: int | None
) -> CustomerContext:
    recent = sorted((p for p in history if not p.automated), key=lambda p: p.created_at, reverse=True)
    week, fortnight = now - timedelta(days=7), now - timedelta(days=14)
    scores = [p.sentiment_score for p in recent[:5]]
    return CustomerContext(
        tier=tier,
        lead_score=lead_score,
        recent=recent,
        issues_7d=sum(1 for p in recent if p.intent in ISSUE_INTENTS and p.created_at >= week),
        open_issues=sum(1 for p in recent if p.intent in ISSUE_INTENTS and p.created_at >= fortnight),
        sentiment_change=current_score - sum(scores) / len(scores) if scores else 0.0,
    )


def raise_urgency(urgency: Urgency, steps: int) -> Urgency:
    return _LEVELS[min(len(_LEVELS) - 1, _LEVELS.index(urgency) + max(0, steps))]


def contextual_urgency(urgency: Urgency, intent: str, context: CustomerContext, *, time_sensitive: bool) -> tuple[Urgency, list[str]]:
    """The message's own urgency, raised by what the context says; with the reasons."""
    steps, reasons = 0, []
    if intent in ISSUE_INTENTS and context.issues_7d >= 2:
        steps += 1
        reasons.append(f"{context.issues_7d + 1} issues in 7 days")
    if time_sensitive:
        steps += 1
        reasons.append("marked time-sensitive")
    return raise_urgency(urgency, steps), reasons
