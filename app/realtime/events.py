"""The events pushed to watching screens, and the channels they travel on.

Channel names embed the tenant from the verified token, so a subscriber can only ever
name its own tenant's channels: two businesses that both have a customer "42" watch
two different channels.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

EventType = Literal["insight", "score", "alert"]


def tenant_prefix(tenant_id: str) -> str:
    """Every channel of the tenant starts with it (tenant ids hold no ':')."""
    return f"t:{tenant_id}:"


def customer_channel(tenant_id: str, customer_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}customer:{customer_id}"


def scoring_channel(tenant_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}scoring"


def workflow_channel(tenant_id: str, run_id: str) -> str:
    """A background run's events: its chunks, status changes and `end`."""
    return f"{tenant_prefix(tenant_id)}workflow:{run_id}"


# Operator events that concern every tenant (provider health): one channel all tenants'
# admins follow. Its events carry tenant_id "" (no tenant).
ADMIN_CHANNEL = "ops:admin"


def parse_event_id(event_id: str) -> tuple[int, int]:
    """Ids are Redis stream ids, `<ms>-<seq>`, in both bus implementations."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


_EVENT_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_MAX_ID_PART = 2**64 - 1  # Redis refuses stream ids beyond 64-bit parts


def is_event_id(value: object) -> bool:
    """A client-sent resume point is valid if Redis would accept it as a stream id."""
    match = _EVENT_ID.fullmatch(value) if isinstance(value, str) else None
    return match is not None and all(int(part) <= _MAX_ID_PART for part in match.groups())


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    tenant_id: str
    data: dict[str, Any]
    customer_id: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def as_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"id": self.id, "type": self.type, "tenant_id": self.tenant_id}
        if self.customer_id is not None:
            message["customer_id"] = self.customer_id
        message["data"] = self.data
        message["created_at"] = self.created_at
        return message

    def after(self, event_id: str | None) -> bool:
        return event_id is None or parse_event_id(self.id) > parse_event_id(event_id)


class IdClock:
    """Monotonic `<ms>-<seq>` ids for the in-process bus (same order as Redis ids)."""

    def __init__(self) -> None:
        self._last = (0, -1)

    def next(self) -> str:
        ms = int(time.time() * 1000)
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self._last[0]}-{self._last[1]}"
