"""A realistic synthetic lead funnel, generated deterministically from a seed.

Why synthetic: no real CRM data may ship with the service, yet the scoring model must
be trained on something with the shape and quirks of real leads. The generator draws
firmographics (company size, industry, role, source, budget), then a latent buying
interest that drives engagement (opens, clicks, visits, pricing views, demo requests,
meetings, recency), and finally conversion from a ground-truth logit plus noise. About
18% of leads convert, as in B2B funnels; ~15% of fields are missing at random.

Why this ground truth: it must not be either model's feature map, or "v2 beats v1"
is true by construction (the first generator used exactly logreg-v2's log1p and
recency decay). Here conversion depends on things neither additive model can express:

- interactions: pricing-page views matter only when a decision maker (director and
  up) reads them; a demo counts more once a meeting was held; industry × source pairs
  (a referral in software, an event in healthcare) convert better than either alone;
- thresholds: a budget at or above the funnel's threshold, company size in a sweet
  spot, activity within the last week or month, at most two meetings counted;
- saturation neither raw counts nor log1p capture: clicks as `1 - exp(-clicks/2.5)`,
  visits as `tanh(visits/5)`; and many opens with no click (a mail filter) lowers it.

A `Funnel` holds what differs between businesses (industry and source weights, their
interactions, the budget threshold, the base rate), so a tenant whose buyers differ
from the shared prior's can be simulated (`TENANT_FUNNEL`).

Run `python -m chains.scoring.synthetic 5 [prior|tenant]` to print a few leads.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

INDUSTRIES = ("software", "retail", "healthcare", "finance", "manufacturing", "education", "agency")
SOURCES = ("referral", "webinar", "organic", "paid_ads", "event", "cold_outbound")
TITLES = (("Founder", 3), ("CEO", 3), ("CMO", 3), ("VP Marketing", 2), ("Head of Growth", 2),
          ("Marketing Director", 2), ("Marketing Manager", 1), ("Sales Lead", 1),
          ("Marketing Specialist", 0), ("Coordinator", 0), ("Intern", 0))
MISSING_RATE = 0.15


@dataclass(frozen=True, slots=True)
class Funnel:
    """What makes a lead convert for one business: the generator's ground truth."""

    name: str
    industry_fit: Mapping[str, float]
    source_effect: Mapping[str, float]
    industry_source: Mapping[tuple[str, str], float]
    industry_mix: tuple[float, ...]
    budget_threshold_usd: float
    base_log_odds: float
    source_mix: tuple[float, ...] = field(default=(0.1, 0.15, 0.25, 0.25, 0.1, 0.15))


PRIOR_FUNNEL = Funnel(
    name="prior",
    industry_fit={"software": 0.6, "agency": 0.5, "retail": 0.2, "finance": 0.1,
                  "healthcare": 0.0, "manufacturing": -0.2, "education": -0.4},
    source_effect={"referral": 0.8, "webinar": 0.4, "event": 0.3, "organic": 0.2,
                   "paid_ads": -0.1, "cold_outbound": -0.6},
    industry_source={("software", "referral"): 0.7, ("agency", "webinar"): 0.5,
                     ("retail", "paid_ads"): 0.6, ("finance", "event"): 0.5,
                     ("manufacturing", "cold_outbound"): 0.5},
    industry_mix=(0.22, 0.15, 0.1, 0.1, 0.13, 0.1, 0.2),
    budget_threshold_usd=15_000,
    base_log_odds=-4.95,
)

# A business selling to clinics and schools: the industries and channels that convert
# for it are nearly the reverse of the prior's, and it needs bigger budgets.
TENANT_FUNNEL = Funnel(
    name="tenant",
    industry_fit={"healthcare": 1.0, "education": 0.7, "finance": 0.2, "manufacturing": 0.0,
                  "retail": -0.3, "software": -0.6, "agency": -0.7},
    source_effect={"event": 0.9, "webinar": 0.5, "referral": 0.2, "organic": 0.0,
                   "cold_outbound": -0.1, "paid_ads": -0.5},
    industry_source={("healthcare", "event"): 0.6, ("education", "webinar"): 0.6,
                     ("software", "referral"): 0.3},
    industry_mix=(0.16, 0.12, 0.22, 0.1, 0.1, 0.18, 0.12),
    budget_threshold_usd=30_000,
    base_log_odds=-4.8,
)
FUNNELS = {funnel.name: funnel for funnel in (PRIOR_FUNNEL, TENANT_FUNNEL)}


@dataclass(frozen=True, slots=True)
class LeadDataset:
    leads: list[dict[str, Any]]
    converted: np.ndarray
    true_probability: np.ndarray  # the ground truth without its noise: what a perfect model would say


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def _lookup(table: Mapping[Any, float], keys: Any) -> np.ndarray:
    return np.array([table.get(key, 0.0) for key in keys], dtype=float)


def fit_of(funnel: Funnel, industry: np.ndarray, source: np.ndarray) -> np.ndarray:
    """How well a lead's industry and source suit the business (interactions included)."""
    return np.asarray(_lookup(funnel.industry_fit, industry) + _lookup(funnel.source_effect, source)
                      + _lookup(funnel.industry_source, zip(industry, source, strict=True)))


def ground_truth_log_odds(
    funnel: Funnel, *, size: np.ndarray, industry: np.ndarray, seniority: np.ndarray, source: np.ndarray,
    budget: np.ndarray, opens: np.ndarray, clicks: np.ndarray, visits: np.ndarray, pricing: np.ndarray,
    demo: np.ndarray, recency: np.ndarray, meetings: np.ndarray,
) -> np.ndarray:
    """The log-odds of converting before noise (see the module docstring for why this shape)."""
    decision_maker = seniority >= 2
    return np.asarray(
        funnel.base_log_odds
        + 1.1 * (1 - np.exp(-clicks / 2.5))
        + 0.9 * ((pricing >= 2) & decision_maker) + 0.15 * (pricing >= 1)
        + 0.5 * np.tanh(visits / 5)
        - 0.5 * ((opens >= 20) & (clicks == 0))
        + 1.0 * demo + 0.5 * (demo & (meetings >= 1))
        + 0.6 * np.minimum(meetings, 2)
        + np.select([recency <= 7, recency <= 30, recency > 60], [0.7, 0.2, -0.6], 0.0)
        + 0.8 * (budget >= funnel.budget_threshold_usd) - 0.6 * (budget < 2_000)
        + np.select([size < 10, size <= 1_000, size > 5_000], [-0.4, 0.4, -0.3], 0.0)
        + 0.25 * seniority
        + 0.9 * fit_of(funnel, industry, source)
    )


def generate_leads(n: int, seed: int = 7, funnel: Funnel = PRIOR_FUNNEL) -> LeadDataset:
    rng = np.random.default_rng(seed)
    size = np.clip(rng.lognormal(mean=3.6, sigma=1.4, size=n), 1, 50_000).astype(int)
    industry = rng.choice(INDUSTRIES, size=n, p=funnel.industry_mix)
    title_index = rng.choice(len(TITLES), size=n)
    seniority = np.array([TITLES[i][1] for i in title_index])
    source = rng.choice(SOURCES, size=n, p=funnel.source_mix)
    budget = np.round(rng.lognormal(mean=8.6, sigma=1.1, size=n) * (1 + np.log1p(size) / 4), -1)

    interest = rng.normal(0, 1, size=n) + 0.5 * fit_of(funnel, industry, source)
    opens = rng.poisson(np.exp(1.2 + 0.5 * interest))
    clicks = rng.binomial(opens, _sigmoid(-1.5 + 0.6 * interest))
    visits = rng.poisson(np.exp(0.8 + 0.6 * interest))
    pricing = rng.binomial(visits, _sigmoid(-1.8 + 0.8 * interest))
    demo = rng.random(n) < _sigmoid(-2.2 + 1.2 * interest)
    recency = np.round(rng.exponential(scale=np.exp(2.6 - 0.6 * interest))).astype(int)
    meetings = rng.poisson(np.exp(-1.0 + 0.7 * interest))

    true_logit = ground_truth_log_odds(
        funnel, size=size, industry=industry, seniority=seniority, source=source, budget=budget, opens=opens,
        clicks=clicks, visits=visits, pricing=pricing, demo=demo, recency=recency, meetings=meetings,
    )
    converted = (rng.random(n) < _sigmoid(true_logit + rng.normal(0, 0.5, size=n))).astype(int)

    leads: list[dict[str, Any]] = []
    for i in range(n):
        lead: dict[str, Any] = {
            "lead_id": f"synthetic-{funnel.name}-{seed}-{i}",
            "company_size": int(size[i]),
            "industry": str(industry[i]),
            "job_title": TITLES[title_index[i]][0],
            "source": str(source[i]),
            "budget_usd": float(budget[i]),
            "email_opens_30d": int(opens[i]),
            "email_clicks_30d": int(clicks[i]),
            "website_visits_30d": int(visits[i]),
            "pricing_page_views_30d": int(pricing[i]),
            "demo_requested": bool(demo[i]),
            "days_since_last_activity": int(recency[i]),
            "meetings_held": int(meetings[i]),
        }
        for key in list(lead):
            if key != "lead_id" and rng.random() < MISSING_RATE:
                lead[key] = None
        leads.append(lead)
    return LeadDataset(leads=leads, converted=converted, true_probability=_sigmoid(true_logit))


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    data = generate_leads(count, funnel=FUNNELS[sys.argv[2] if len(sys.argv) > 2 else "prior"])
    for lead, label in zip(data.leads, data.converted, strict=True):
        print(label, lead)
