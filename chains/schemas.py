"""Inputs and outputs of the chains, as the public contract names them.

Inputs ignore fields they do not know (the contract allows more), which is also how
a `tenant_id` or `user_id` smuggled into an input is dropped: identity comes from the
verified token only (see `chains.context`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

Channel = Literal["email", "sms", "call", "chat", "social", "web"]
CustomerTier = Literal["standard", "high_value"]
SentimentLabel = Literal["positive", "neutral", "negative"]
Urgency = Literal["low", "medium", "high"]
Intent = Literal[
    "purchase_interest",
    "pricing_inquiry",
    "support_request",
    "complaint",
    "cancellation_risk",
    "meeting_request",
    "feedback",
    "general_inquiry",
]

CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"
# One rule for a customer id wherever one arrives: in a body (`CustomerId`) or a path.
CUSTOMER_ID_RULES: dict[str, Any] = {"min_length": 1, "max_length": 128, "pattern": CUSTOMER_ID_PATTERN}
CustomerId = Field(**CUSTOMER_ID_RULES)


class ChainInput(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


_T = TypeVar("_T")


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


# Optional, but published as the bare type with no default: the LangServe playground
# renders its form from the input schema, shows a blank page on `anyOf: [..., {"type":
# "null"}]`, and refuses to start a run whose form holds a null it calls invalid.
# Clients may still send null or leave the field out.
Omittable = Annotated[_T | SkipJsonSchema[None], Field(default=None, json_schema_extra=_no_default)]
Count = Annotated[int, Field(ge=0, le=100_000)]


class InteractionInput(ChainInput):
    """One customer message, call transcript or chat turn to analyse."""

    customer_id: str = CustomerId
    text: str = Field(min_length=1, max_length=20_000)
    channel: Channel
    customer_tier: CustomerTier = "standard"
    time_sensitive: bool = False
    lead_score: Omittable[Annotated[int, Field(ge=0, le=100, description="The customer's latest lead score, if known.")]]


class Sentiment(BaseModel):
    label: SentimentLabel
    score: float = Field(ge=-1.0, le=1.0)


class Recommendation(BaseModel):
    action: str
    description: str
    priority: Urgency
    confidence: float = Field(ge=0.0, le=1.0)
    estimated_impact: float = Field(ge=0.0, le=1.0)
    next_steps: list[str]
    reason: str = Field(default="", description="Why this action, for this message and customer.")


class FieldConfidence(BaseModel):
    sentiment: float = Field(ge=0.0, le=1.0)
    intent: float = Field(ge=0.0, le=1.0)
    urgency: float = Field(ge=0.0, le=1.0)


class CustomerContextOut(BaseModel):
    recent_interactions: int
    issues_last_7_days: int
    open_issues: int
    sentiment_trend: Literal["unknown", "worsening", "steady", "improving"]
    sentiment_change: float
    tier: CustomerTier
    lead_score: int | None = None


class InteractionAnalysis(BaseModel):
    """Streamed field by field: provisional local labels first (`provisional: true`), then
    the final ones, the summary in text pieces (appended), the actions last. Fields other
    than `summary` are replaced by their latest value."""

    sentiment: Sentiment
    intent: Intent
    urgency: Urgency
    summary: str
    recommendations: list[Recommendation]
    degraded: bool = False
    degraded_reason: str | None = None
    provisional: bool = Field(default=False, description="True while the labels are the fast local ones an LLM will replace.")
    confidence: FieldConfidence | None = Field(default=None, description="Calibrated confidence of each label.")
    uncertain: list[str] = Field(default_factory=list, description="Labels whose confidence is too low to trust blindly.")
    automated: bool = Field(default=False, description="Spam, notifications or auto-replies: no actions.")
    pain_points: list[str] = Field(default_factory=list)
    preferences: list[str] = Field(default_factory=list)
    customer_context: CustomerContextOut | None = None
    text_truncated: bool = Field(
        default=False,
        description="The local analysis read the first 2,000 and last 1,000 characters of a longer message.",
    )
    cached_from: str | None = Field(
        default=None, description="Set when the answer came from the cache: when that analysis was made."
    )
    cache_similarity: float | None = Field(
        default=None, description="Cosine similarity of the cached message to this one (1 for the same text)."
    )





class LeadInput(ChainInput):
    """A lead's profile and engagement. Unknown numbers default to typical values."""

    lead_id: str = Field(min_length=1, max_length=128)
    company_size: Omittable[Annotated[int, Field(ge=0, le=10_000_000)]]
    industry: Omittable[Annotated[str, Field(max_length=64)]]
    job_title: Omittable[Annotated[str, Field(max_length=128)]]
    source: Omittable[Annotated[str, Field(max_length=64)]]
    budget_usd: Omittable[Annotated[float, Field(ge=0, allow_inf_nan=False)]]
    email_opens_30d: Omittable[Count]
    email_clicks_30d: Omittable[Count]
    website_visits_30d: Omittable[Count]
    pricing_page_views_30d: Omittable[Count]
    demo_requested: Omittable[bool]
    days_since_last_activity: Omittable[Annotated[int, Field(ge=0, le=10_000)]]
    meetings_held: Omittable[Annotated[int, Field(ge=0, le=10_000)]]


class ReasoningFactor(BaseModel):
    factor: str
    weight: float = Field(description="Contribution in log-odds relative to the average lead.")
    value: bool | int | float | str | None
    explanation: str


class LeadScore(BaseModel):
    lead_id: str
    score: int = Field(ge=0, le=100)
    confidence: float = Field(ge=0.0, le=1.0)
    reasoning: list[ReasoningFactor]
    base_log_odds: float = Field(
        description="Log-odds of the average lead: sigmoid(base + sum of weights) * 100 = score."
    )
    model_version: str


class InsightsQuestion(ChainInput):
    customer_id: str = CustomerId
    question: str = Field(min_length=1, max_length=4_000)
    session_id: str = Field(default="default", min_length=1, max_length=128)


class Source(BaseModel):
    citation: int = Field(description="The number the answer cites this passage by: [n].")
    document_id: str
    title: str
    customer_id: str | None
    score: float


class InsightsAnswer(BaseModel):
    """Streamed as `{"sources": [retrieved]}` first, then `{"answer": "<text chunk>"}`
    pieces, then `{"sources": [cited], "removed_citations": [...]}`, which replaces the
    first list: the final `sources` are the passages the answer cites, none when nothing
    was found."""

    sources: list[Source]
    answer: str
    session_id: str
    removed_citations: list[int] = Field(
        default_factory=list,
        description="Citation numbers the model used that named no source; removed from the answer.",
    )
