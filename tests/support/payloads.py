"""Valid inputs for each chain, as a client would send them."""

from __future__ import annotations

from typing import Any

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH, LEAD_SCORING_PATH

INTERACTION = {
    "customer_id": "cust-1",
    "text": "Third outage this week. If this is not fixed today we will cancel our contract.",
    "channel": "email",
    "customer_tier": "high_value",
}
LEAD = {
    "lead_id": "lead-1",
    "job_title": "VP Marketing",
    "company_size": 120,
    "demo_requested": True,
    "pricing_page_views_30d": 4,
    "email_clicks_30d": 3,
    "days_since_last_activity": 2,
}
QUESTION = {"customer_id": "cust-1", "question": "What does the customer need before renewing?"}

CHAIN_INPUTS: dict[str, dict[str, Any]] = {
    INTERACTIONS_PATH: INTERACTION,
    LEAD_SCORING_PATH: LEAD,
    INSIGHTS_CHAT_PATH: QUESTION,
}
