"""The local summary of a message: what the customer wants, what hurts, by when, for how
much, and what their history adds. Composed from the extracted substance, so it covers
the message rather than quoting one sentence of it."""

from __future__ import annotations

from chains.customer_context import CustomerContext
from chains.local.extract import Substance

_INTENT_WORDS = {
    "purchase_interest": "wants to buy or expand",
    "pricing_inquiry": "asks about pricing",
    "support_request": "needs help with a problem",
    "complaint": "is complaining",
    "cancellation_risk": "may leave or downgrade",
    "meeting_request": "wants to meet or reschedule",
    "feedback": "is sharing feedback",
    "general_inquiry": "has a question",
}


def _quoted(label: str, items: list[str]) -> str:
    """`Asks: "Can you call me?"; "Send the deck."`: the customer's words keep their own
    end punctuation, a full stop closes the rest."""
    text = "; ".join(f'"{item}"' for item in items)
    return f"{label}: {text}" + ("" if items[-1].endswith((".", "?", "!")) else ".")


def compose_summary(
    *, intent: str, sentiment: str, urgency: str, channel: str, automated: bool, substance: Substance,
    context: CustomerContext,
) -> str:
    if automated:
        return f"Automated or unsolicited {channel} message (spam, notification or auto-reply): no action needed."
    who = "A high-value customer" if context.tier == "high_value" else "The customer"
    parts = [f"{who} {_INTENT_WORDS.get(intent, 'has a question')} ({sentiment} {channel}, {urgency} urgency)."]
    if substance.asks:
        parts.append(_quoted("Asks", substance.asks[:2]))
    if substance.pain_points:
        parts.append(_quoted("Pain points", substance.pain_points[:2]))
    if substance.deadlines:
        parts.append(f"Timing: {', '.join(substance.deadlines)}.")
    if substance.amounts:
        parts.append(f"Amounts: {', '.join(substance.amounts)}.")
    if context.issues_7d >= 1:
        parts.append(f"{context.issues_7d} earlier issue(s) in the last 7 days.")
    if context.trend in ("worsening", "improving"):
        parts.append(f"Sentiment is {context.trend} ({context.sentiment_change:+.2f}).")
    return " ".join(parts)
