"""Next best actions from a sales and success playbook, ranked by confidence × impact.

Each play names the signals it answers; its confidence is the play's base rate scaled
by how sure the analysis is of those signals, and its impact grows with the
customer's value and the urgency. Ranking is the contract's: confidence × impact.
"""

from __future__ import annotations

from dataclasses import dataclass

from chains.local.intent import IntentResult
from chains.schemas import CustomerTier, Intent, Recommendation, Sentiment, Urgency


@dataclass(frozen=True, slots=True)
class Play:
    action: str
    description: str
    intents: frozenset[Intent]
    base_confidence: float
    base_impact: float
    next_steps: tuple[str, ...]
    needs_negative: bool = False


PLAYBOOK: tuple[Play, ...] = (
    Play("retention_outreach", "Call the customer with a retention offer before they decide to leave.",
         frozenset({"cancellation_risk"}), 0.85, 0.9,
         ("Call within the hour", "Review account health and usage", "Prepare a retention offer")),
    Play("escalate_to_manager", "Escalate to an account manager who can own the resolution.",
         frozenset({"complaint", "cancellation_risk"}), 0.75, 0.8,
         ("Assign an owner", "Acknowledge the issue in writing", "Agree on a resolution date"),
         needs_negative=True),
    Play("open_priority_ticket", "Open a priority support ticket and share the ticket number.",
         frozenset({"support_request", "complaint"}), 0.8, 0.6,
         ("Create the ticket with the customer's words", "Send the ticket link", "Follow up on resolution")),
    Play("send_pricing", "Send tailored pricing with the plan that fits their usage.",
         frozenset({"pricing_inquiry"}), 0.8, 0.6,
         ("Check seats and usage", "Send the quote", "Offer a call to walk through it")),
    Play("book_demo", "Offer a demo slot while interest is high.",
         frozenset({"purchase_interest", "meeting_request", "pricing_inquiry"}), 0.7, 0.75,
         ("Propose two time slots", "Send a calendar invite", "Share a one-page overview")),
    Play("send_proposal", "Send a proposal and move the deal to negotiation.",
         frozenset({"purchase_interest"}), 0.75, 0.85,
         ("Confirm scope and seats", "Send the proposal", "Set a decision date")),
    Play("confirm_meeting", "Confirm the requested meeting and the agenda.",
         frozenset({"meeting_request"}), 0.85, 0.5,
         ("Reply with a time", "Share the agenda", "Invite the right colleague")),
    Play("ask_for_referral", "Thank them and ask for a review or a referral.",
         frozenset({"feedback"}), 0.6, 0.5,
         ("Send a thank-you note", "Ask for a review", "Offer the referral programme")),
    Play("log_feedback", "Log the feedback for the product team and close the loop.",
         frozenset({"feedback", "complaint"}), 0.65, 0.35,
         ("Record the feedback", "Tell the customer it was shared")),
    Play("reply_with_answer", "Reply with a clear answer and a useful resource.",
         frozenset({"general_inquiry", "support_request", "pricing_inquiry"}), 0.7, 0.3,
         ("Answer the question", "Link the relevant help article")),
)

_URGENCY_WEIGHT: dict[Urgency, float] = {"low": 0.9, "medium": 1.0, "high": 1.15}


def recommend(
    intent: IntentResult,
    sentiment: Sentiment,
    urgency: Urgency,
    tier: CustomerTier,
    *,
    limit: int = 3,
) -> list[Recommendation]:
    candidates: list[Recommendation] = []
    for play in PLAYBOOK:
        if intent.intent not in play.intents:
            continue
        if play.needs_negative and sentiment.label != "negative":
            continue
        confidence = play.base_confidence * (0.6 + 0.4 * intent.confidence)
        impact = play.base_impact * _URGENCY_WEIGHT[urgency] * (1.15 if tier == "high_value" else 1.0)
        candidates.append(
            Recommendation(
                action=play.action,
                description=play.description,
                priority=urgency,
                confidence=round(min(confidence, 1.0), 3),
                estimated_impact=round(min(impact, 1.0), 3),
                next_steps=list(play.next_steps),
            )
        )
    candidates.sort(key=lambda r: r.confidence * r.estimated_impact, reverse=True)
    return candidates[:limit]
