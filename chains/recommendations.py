"""Next best actions, ranked by confidence × impact computed for this message and customer.

Each play says which intents it answers and how well (`fits`). Its **confidence** is the
probability that the play fits this message: Σ P(intent) × fit, from the calibrated
intent model (or the LLM's), times the probability of the sentiment it needs, if any.
Its **impact** is the play's base value scaled by the customer's tier, the message's
urgency and the context (issues this week, a worsening mood, the lead score for sales
plays). Ranking is the contract's: confidence × impact. Every action carries the reason
it was chosen. Automated messages and spam get no actions at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from chains.customer_context import CustomerContext
from chains.schemas import Recommendation, Urgency


@dataclass(frozen=True)
class Play:
    action: str
    description: str
    fits: Mapping[str, float]  # intent -> how well the play answers it
    base_impact: float
    next_steps: tuple[str, ...]
    needs_sentiment: str | None = None  # the play applies in proportion to P(this sentiment)
    sales: bool = False  # a sales play: impact follows the lead score
    on_worsening: float = 0.0  # confidence added when the customer's mood is getting worse


PLAYBOOK: tuple[Play, ...] = (
    Play("retention_outreach", "Call the customer with a retention offer before they decide to leave.",
         {"cancellation_risk": 1.0}, 0.9,
         ("Call within the hour", "Review account health and usage", "Prepare a retention offer"), on_worsening=0.2),
    Play("escalate_to_manager", "Escalate to an account manager who can own the resolution.",
         {"complaint": 0.9, "cancellation_risk": 0.6, "support_request": 0.3}, 0.8,
         ("Assign an owner", "Acknowledge the issue in writing", "Agree on a resolution date"),
         needs_sentiment="negative"),
    Play("acknowledge_and_make_good", "Acknowledge what went wrong and offer a concrete remedy (redo, credit, refund).",
         {"complaint": 1.0}, 0.7,
         ("Apologise specifically", "Offer a remedy that matches the harm", "Confirm it was done")),
    Play("open_priority_ticket", "Open a priority support ticket and share the ticket number.",
         {"support_request": 1.0, "complaint": 0.4}, 0.6,
         ("Create the ticket with the customer's words", "Send the ticket link", "Follow up on resolution")),
    Play("send_pricing", "Send tailored pricing with the plan that fits their usage.",
         {"pricing_inquiry": 1.0, "purchase_interest": 0.3}, 0.6,
         ("Check seats and usage", "Send the quote", "Offer a call to walk through it"), sales=True),
    Play("send_proposal", "Send a proposal and move the deal to negotiation.",
         {"purchase_interest": 1.0}, 0.85,
         ("Confirm scope and seats", "Send the proposal", "Set a decision date"), sales=True),
    Play("book_demo", "Offer a demo slot while interest is high.",
         {"purchase_interest": 0.6, "pricing_inquiry": 0.4, "meeting_request": 0.3}, 0.7,
         ("Propose two time slots", "Send a calendar invite", "Share a one-page overview"), sales=True),
    Play("confirm_meeting", "Confirm the requested meeting and the agenda.",
         {"meeting_request": 1.0}, 0.5,
         ("Reply with a time", "Share the agenda", "Invite the right colleague")),
    Play("ask_for_referral", "Thank them and ask for a review or a referral.",
         {"feedback": 1.0}, 0.5,
         ("Send a thank-you note", "Ask for a review", "Offer the referral programme"), needs_sentiment="positive"),
    Play("log_feedback", "Log the feedback for the product team and close the loop.",
         {"feedback": 0.9, "complaint": 0.2}, 0.35,
         ("Record the feedback", "Tell the customer it was shared")),
    Play("reply_with_answer", "Reply with a clear answer and a useful resource.",
         {"general_inquiry": 1.0, "support_request": 0.3, "pricing_inquiry": 0.2}, 0.3,
         ("Answer the question", "Link the relevant help article")),
    Play("check_in_call", "Call to check in: the customer's mood has been getting worse.",
         {}, 0.6, ("Review the last interactions", "Call and listen", "Agree on one next step"), on_worsening=0.7),
)

_URGENCY_IMPACT: dict[Urgency, float] = {"low": 0.85, "medium": 1.0, "high": 1.2}
MIN_CONFIDENCE = 0.15


@dataclass(frozen=True)
class Signals:
    """What the plays are weighed against: label probabilities from the analysis."""

    intents: Mapping[str, float]
    sentiments: Mapping[str, float]
    urgency: Urgency
    automated: bool = False
    reasons: list[str] = field(default_factory=list)  # context facts worth quoting


def _impact(play: Play, signals: Signals, context: CustomerContext) -> tuple[float, list[str]]:
    impact, why = play.base_impact * _URGENCY_IMPACT[signals.urgency], [f"{signals.urgency} urgency"]
    if context.tier == "high_value":
        impact *= 1.2
        why.append("high-value customer")
    if context.issues_7d >= 2 and not play.sales:
        impact *= 1.15
        why.append(f"{context.issues_7d} earlier issues this week")
    if play.sales and context.lead_score is not None:
        impact *= 0.7 + 0.6 * context.lead_score / 100
        why.append(f"lead score {context.lead_score}")
    return min(impact, 1.0), why


def recommend(signals: Signals, context: CustomerContext, *, limit: int = 3) -> list[Recommendation]:
    if signals.automated:
        return []  # spam and machine mail: nothing to sell, nobody to call
    ranked: list[Recommendation] = []
    for play in PLAYBOOK:
        fit = sum(signals.intents.get(intent, 0.0) * weight for intent, weight in play.fits.items())
        why: list[str] = []
        if play.fits:
            best = max(play.fits, key=lambda intent: signals.intents.get(intent, 0.0) * play.fits[intent])
            why.append(f"{best} {signals.intents.get(best, 0.0):.0%}")
        if play.needs_sentiment:
            fit *= signals.sentiments.get(play.needs_sentiment, 0.0)
            why.append(f"{play.needs_sentiment} {signals.sentiments.get(play.needs_sentiment, 0.0):.0%}")
        if play.on_worsening and context.trend == "worsening":
            fit += play.on_worsening * min(1.0, -context.sentiment_change)
            why.append(f"sentiment worsening ({context.sentiment_change:+.2f})")
        confidence = min(fit, 1.0)
        if confidence < MIN_CONFIDENCE:
            continue
        impact, impact_why = _impact(play, signals, context)
        ranked.append(Recommendation(
            action=play.action, description=play.description, priority=signals.urgency,
            confidence=round(confidence, 3), estimated_impact=round(impact, 3), next_steps=list(play.next_steps),
            reason="; ".join([*why, *impact_why, *signals.reasons]),
        ))
    ranked.sort(key=lambda r: r.confidence * r.estimated_impact, reverse=True)
    return ranked[:limit]
