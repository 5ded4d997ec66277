"""Delivery of operator alerts to `ALERT_WEBHOOK_URL`: signed, in the background, retried.

An alert must never slow or fail the call that raised it, so `send` only schedules the
delivery. Each attempt is a JSON POST signed with HMAC-SHA256 over
`"<timestamp>.<body>"` (`X-Signature-256: sha256=<hex>`, `X-Signature-Timestamp: <unix
seconds>`): the receiver recomputes it with `ALERT_WEBHOOK_SECRET`, compares in constant
time and refuses old timestamps, so a captured delivery cannot be replayed later. The
timestamp is fresh for every attempt, so a retry after a long back-off is still recent.

5xx, 429 and connection errors are retried with exponential back-off (tenacity); after
`ALERT_WEBHOOK_MAX_ATTEMPTS` the alert is given up with a log line and a metric (the
admin feed and the ops record still have it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential

from app.core.metrics import ALERT_WEBHOOK_DELIVERIES

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Signature-256"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
CLOSE_WAIT_S = 5.0  # at shutdown, in-flight deliveries get this long before they are dropped


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Signature-256` value of a delivery."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookRefused(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"webhook answered {status_code}")
        self.status_code = status_code


def _retryable(error: BaseException) -> bool:
    if isinstance(error, WebhookRefused):
        return error.status_code >= 500 or error.status_code == 429
    return isinstance(error, httpx.TransportError)


class AlertWebhook:
    def __init__(
        self,
        url: str,
        secret: str,
        *,
        max_attempts: int,
        backoff_s: float,
        timeout_s: float,
    ) -> None:
        self.url = url
        self._secret = secret.encode()
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, payload: dict[str, Any]) -> None:
        """Schedules the delivery and returns at once."""
        task = asyncio.create_task(self._deliver(payload), name="alert-webhook")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, body: bytes) -> None:
        timestamp = str(int(time.time()))
        response = await self._client.post(
            self.url, content=body,
            headers={"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                     SIGNATURE_HEADER: signature(self._secret, timestamp, body)},
        )
        if response.status_code >= 300:
            raise WebhookRefused(response.status_code)

    async def _deliver(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()

        def retried(state: RetryCallState) -> None:
            ALERT_WEBHOOK_DELIVERIES.labels("retried").inc()
            log.info("alert webhook attempt %d failed (%r), retrying", state.attempt_number,
                     state.outcome.exception() if state.outcome else None)

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._max_attempts),
                wait=wait_exponential(multiplier=self._backoff_s, max=60),
                retry=retry_if_exception(_retryable),
                before_sleep=retried,
                reraise=True,
            ):
                with attempt:
                    await self._post(body)
        except Exception as error:  # noqa: BLE001 - a lost alert is logged and counted, never raised
            ALERT_WEBHOOK_DELIVERIES.labels("failed").inc()
            log.error("alert webhook gave up on %s alert %s: %r", payload.get("type"), payload.get("id"), error)
            return
        ALERT_WEBHOOK_DELIVERIES.labels("delivered").inc()

    async def close(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=CLOSE_WAIT_S)
            for task in pending:
                task.cancel()
        await self._client.aclose()
