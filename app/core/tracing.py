"""OpenTelemetry tracing, set up from the settings: off unless `TRACING_ENABLED=true`.

On, the app gets its own SDK `TracerProvider` (a batch processor feeding the OTLP/HTTP
exporter, configured by the SDK's standard `OTEL_EXPORTER_OTLP_*` variables, or an
injected exporter), FastAPI's request spans (opentelemetry-instrumentation-fastapi) and a
tracer for the service's own spans (`chains.spans`). Off, none of that exists: no
provider, no middleware, no exporter, and every component holds the
API's no-op tracer.

The provider is the app's, not the process-global one: the global one can be set only
once per process, and several apps (tests, benches) may live in one. The exporter's
worker thread starts in the lifespan, which also flushes and stops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Span, Status, Tracer

from app.core.config import Settings
from chains.spans import NO_TRACER

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACER_NAME = "crm-realtime-ai"


class Tracing:
    def __init__(self, provider: TracerProvider | None, exporter: SpanExporter | None) -> None:
        self.provider = provider
        self._exporter = exporter
        self.tracer: Tracer = provider.get_tracer(TRACER_NAME) if provider is not None else NO_TRACER

    @classmethod
    def from_settings(cls, settings: Settings, exporter: SpanExporter | None = None) -> Tracing:
        """`exporter` replaces OTLP (tests pass the SDK's `InMemorySpanExporter`)."""
        if not settings.tracing_enabled:
            return cls(None, None)
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, ...
        # The sampler is the SDK's: OTEL_TRACES_SAMPLER (default: parent-based, always on).
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.otel_service_name}))
        return cls(provider, exporter)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def instrument(self, app: FastAPI) -> None:
        """Request spans for every HTTP route (and WebSocket connection), without the
        per-message `send`/`receive` spans (one per streamed chunk)."""
        if self.provider is None:
            return
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=self.provider, exclude_spans=["receive", "send"],
            server_request_hook=_redact_query,
        )

    def start(self) -> None:
        """Starts exporting (the batch processor's worker thread): in the lifespan."""
        if self.provider is None or self._exporter is None:
            return
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider.add_span_processor(BatchSpanProcessor(_TypesOnly(self._exporter)))
        self._exporter = None  # once: a second lifespan of the same app adds no second processor

    def force_flush(self, timeout_ms: int = 5_000) -> bool:
        return self.provider.force_flush(timeout_ms) if self.provider is not None else True

    def shutdown(self) -> None:
        """Exports what is pending and stops the exporter."""
        if self.provider is not None:
            self.provider.shutdown()


def _redact_query(span: Span, scope: dict[str, Any]) -> None:
    """Query values never reach a trace: a browser signs in with `?token=<jwt>`, which
    the instrumentation would record in `http.url` (it redacts only cloud signatures)."""
    query = scope.get("query_string")
    if not query or not span.is_recording():
        return
    redacted = urlencode([(key, "REDACTED") for key, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)])
    attributes = getattr(span, "attributes", None) or {}
    if "http.url" in attributes:
        span.set_attribute("http.url", str(attributes["http.url"]).split("?", 1)[0] + "?" + redacted)
    if "url.query" in attributes:
        span.set_attribute("url.query", redacted)
    if "http.target" in attributes and "?" in str(attributes["http.target"]):
        span.set_attribute("http.target", str(attributes["http.target"]).split("?", 1)[0])



class _TypesOnly(SpanExporter):
    """What leaves the process names errors by type only: the FastAPI instrumentation
    records an unhandled exception's message and stack trace on the request span (and in
    its status text), and a message can quote the customer's text. Exception events keep
    `exception.type`; status descriptions go."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([_scrubbed(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _scrubbed(span: ReadableSpan) -> ReadableSpan:
    if not span.status.description and all(event.name != "exception" for event in span.events):
        return span
    events = [
        Event(event.name, {k: v for k, v in (event.attributes or {}).items() if k == "exception.type"},
              event.timestamp)
        if event.name == "exception" else event
        for event in span.events
    ]
    return ReadableSpan(
        name=span.name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=span.attributes, events=events, links=span.links, kind=span.kind,
        status=Status(span.status.status_code), start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
