"""The embedded analysis of one message: learned labels, substance, guard, then the
fields of the result with the customer's context applied.

`read_message` is the CPU work (`chains.ports.CpuRunner.run_sized`: in place for a short
message, off the event loop for a long one);
`local_labels` turns its reading into the labels of the provisional first event, and
`local_fields` (with the customer's context) into all the public fields: the same shape
whether the local analysis is the answer or what an LLM's answer replaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chains.customer_context import CustomerContext, contextual_urgency
from chains.local.classifier import Prediction, classifier
from chains.local.extract import Substance, extract
from chains.local.summary import compose_summary
from chains.recommendations import Signals, recommend
from chains.safety import GuardResult, guard_untrusted
from chains.schemas import Urgency
from chains.text import excerpt

# Below these calibrated confidences a field is reported as uncertain: a rep (or an
# LLM, when one serves) should look at it rather than trust a default. A message of
# fewer than `TOO_SHORT_WORDS` words ("ok", "?") says too little for any label:
# calibration cannot vouch for text that short.
UNCERTAIN_BELOW = {"sentiment": 0.55, "intent": 0.5, "urgency": 0.55}
TOO_SHORT_WORDS = 3


@dataclass(frozen=True)
class MessageReading:
    predictions: dict[str, Prediction]
    substance: Substance
    guard: GuardResult
    truncated: bool
    words: int

    @property
    def automated(self) -> bool:
        return self.predictions["automated"].label == "yes"

    @property
    def sentiment_score(self) -> float:
        """P(positive) − P(negative): −1..1, 0 when the model cannot tell."""
        p = self.predictions["sentiment"].probabilities
        return round(p.get("positive", 0.0) - p.get("negative", 0.0), 4)


def read_message(text: str, channel: str) -> MessageReading:
    """The CPU work of one message: labels and substance on the bounded excerpt, the
    injection guard on all of it (the whole text may go to an LLM)."""
    local_text, truncated = excerpt(text)
    return MessageReading(classifier().predict(local_text, channel), extract(local_text),
                          guard_untrusted(text), truncated, len(text.split()))


def local_labels(
    reading: MessageReading, context: CustomerContext, *, time_sensitive: bool
) -> tuple[dict[str, Any], list[str]]:
    """The labels alone, and why the urgency is what it is: the provisional event needs
    nothing else, and it is the first event of every stream."""
    predictions = reading.predictions
    intent = predictions["intent"].label
    urgency, urgency_reasons = contextual_urgency(
        _urgency(predictions["urgency"].label), intent, context, time_sensitive=time_sensitive
    )
    confidence = {task: predictions[task].confidence for task in UNCERTAIN_BELOW}
    return {
        "sentiment": {"label": predictions["sentiment"].label, "score": reading.sentiment_score},
        "intent": intent,
        "urgency": urgency,
        "confidence": confidence,
        "uncertain": [task for task, floor in UNCERTAIN_BELOW.items()
                      if confidence[task] < floor or reading.words < TOO_SHORT_WORDS],
        "automated": reading.automated,
    }, urgency_reasons


def local_fields(
    reading: MessageReading, context: CustomerContext, *, channel: str, time_sensitive: bool
) -> dict[str, Any]:
    labels, urgency_reasons = local_labels(reading, context, time_sensitive=time_sensitive)
    predictions = reading.predictions
    intent, urgency = labels["intent"], labels["urgency"]
    signals = Signals(
        intents=predictions["intent"].probabilities, sentiments=predictions["sentiment"].probabilities,
        urgency=urgency, automated=reading.automated, reasons=urgency_reasons,
    )
    return {
        **labels,
        "pain_points": reading.substance.pain_points,
        "preferences": reading.substance.preferences,
        "customer_context": context.public(),
        "summary": compose_summary(
            intent=intent, sentiment=labels["sentiment"]["label"], urgency=urgency, channel=channel,
            automated=reading.automated, substance=reading.substance, context=context,
        ),
        "recommendations": [r.model_dump() for r in recommend(signals, context)],
    }


def _urgency(label: str) -> Urgency:
    return label if label in ("low", "medium", "high") else "medium"  # type: ignore[return-value]
