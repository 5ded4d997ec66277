"""Cost estimates per model, USD per million tokens (input, output), list prices.

Prefix matching, so dated model names (`gpt-4o-mini-2024-07-18`) find their family.
Unknown models cost 0 and say so in the audit record's `model`; local models are free.
"""

from __future__ import annotations

PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.5-flash": (0.30, 2.50),
}


def estimate_cost_usd(model: str | None, tokens_in: int, tokens_out: int) -> float:
    if not model:
        return 0.0
    for prefix in sorted(PRICES_PER_MTOK, key=len, reverse=True):
        if model.startswith(prefix):
            price_in, price_out = PRICES_PER_MTOK[prefix]
            return round((tokens_in * price_in + tokens_out * price_out) / 1_000_000, 8)
    return 0.0
