"""Which model scores a tenant's leads, and which versions the tenant can see.

A tenant is scored by its own newest model once it has one (`tenant-v<n>`, trained
from its outcomes by `app.core.scoring_training`), and by its shared prior until then
(`logreg-v2` unless `SCORING_TENANT_MODELS` routes it elsewhere for an A/B test).

Scoring is the hot path, so the newest version number is read at most once every
`SCORING_MODEL_CHECK_S` per tenant and process (one read of the registry's primary
key; concurrent scorers of a tenant share it), and the parameters are loaded only when
that number changed. A version trained on another replica therefore serves here within
`SCORING_MODEL_CHECK_S`; one trained here serves at once. If the database cannot be
read, the last model known keeps serving (else the prior): a score is never refused
because the registry is briefly away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from app.core.errors import NotFound
from app.store.scoring_models import ModelRegistry, StoredModelInfo
from chains.scoring.chain import ModelRouting
from chains.scoring.model import LeadScoringModel

log = logging.getLogger(__name__)
CACHED_TENANTS = 1_024  # models of the tenants scored most recently, per process
RETRY_AFTER_FAILURE_S = 1.0


@dataclass(slots=True)
class _Known:
    checked_at: float
    number: int | None
    model: LeadScoringModel | None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A version as a tenant sees it: a shared prior, or one of its own."""

    name: str
    kind: str  # "shared_prior" or "tenant"
    active: bool
    params: dict[str, Any] | None  # only when resolved for use
    info: StoredModelInfo | None  # tenant versions
    out_of_fold: dict[str, float | None] | None  # tenant versions: lead_id -> out-of-fold probability


class TenantScoringModels:
    def __init__(self, routing: ModelRouting, registry: ModelRegistry, *, check_every_s: float) -> None:
        self.routing = routing
        self.registry = registry
        self.check_every_s = check_every_s
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._reading: dict[str, asyncio.Future[LeadScoringModel | None]] = {}

    def prior_for(self, tenant_id: str) -> LeadScoringModel:
        return self.routing.prior_for(tenant_id)

    async def for_tenant(self, tenant_id: str) -> LeadScoringModel:
        known = self._known.get(tenant_id)
        if known is not None and time.monotonic() - known.checked_at < self.check_every_s:
            self._known.move_to_end(tenant_id)
            return known.model or self.prior_for(tenant_id)
        reading = self._reading.get(tenant_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read_newest(tenant_id))
            self._reading[tenant_id] = reading
            reading.add_done_callback(lambda _: self._reading.pop(tenant_id, None))
        return await asyncio.shield(reading) or self.prior_for(tenant_id)

    async def _read_newest(self, tenant_id: str) -> LeadScoringModel | None:
        known = self._known.get(tenant_id)
        try:
            head = await self.registry.newest(tenant_id)
            if head is None:
                model = None
            elif known is not None and known.number == head.number:
                model = known.model
            else:
                params = await self.registry.params(tenant_id, head.number)
                model = None if params is None else LeadScoringModel.from_params(params)
        except Exception:  # noqa: BLE001 - serve what we know; try again shortly
            log.warning("reading the scoring model of tenant %s failed; serving the last known", tenant_id,
                        exc_info=True)
            if known is not None:
                known.checked_at = time.monotonic() - self.check_every_s + RETRY_AFTER_FAILURE_S
            return known.model if known is not None else None
        self._remember(tenant_id, head.number if head else None, model)
        return model

    def _remember(self, tenant_id: str, number: int | None, model: LeadScoringModel | None) -> None:
        self._known[tenant_id] = _Known(time.monotonic(), number, model)
        self._known.move_to_end(tenant_id)
        while len(self._known) > CACHED_TENANTS:
            self._known.popitem(last=False)

    def activate(self, tenant_id: str, number: int, model: LeadScoringModel) -> None:
        """A version this process just stored: it serves from the next score on."""
        self._remember(tenant_id, number, model)

    async def versions(self, tenant_id: str) -> tuple[str, list[ModelVersion]]:
        """The active version's name, and every version available to the tenant: its
        shared prior(s) first, then its own, newest first."""
        own = await self.registry.list(tenant_id)
        active = own[0].name if own else self.prior_for(tenant_id).version
        shared = [ModelVersion(name, "shared_prior", name == active, None, None, None) for name in self.routing.models]
        mine = [ModelVersion(info.name, "tenant", info.name == active, None, info, None) for info in own]
        return active, shared + mine

    def shared(self, name: str) -> LeadScoringModel | None:
        return self.routing.models[name] if name in self.routing.models else None

    async def resolve(self, tenant_id: str, name: str) -> ModelVersion:
        """A version with its parameters (and, for the tenant's own, its out-of-fold
        predictions); NotFound when the tenant has no such version."""
        prior = self.shared(name)
        if prior is not None:
            return ModelVersion(name, "shared_prior", False, prior.to_params(), None, None)
        stored = await self.registry.by_name(tenant_id, name)
        if stored is None:
            raise NotFound(f"no scoring model version {name!r} for your tenant; see GET /api/v1/ai/scoring/models")
        return ModelVersion(name, "tenant", False, stored.params, stored.info, stored.out_of_fold)
