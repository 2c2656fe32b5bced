"""Distributed traces of a job across the API, Kafka, the workers, the sink and the SSE gateway.

A job's W3C trace context (``traceparent``/``tracestate``) travels in the Kafka record headers of
its request and of every event of it, so each process that touches the job can add a span to the
same trace. Spans are recorded and exported (OTLP over HTTP, protobuf) only in a process where
``setup`` found the standard OpenTelemetry environment asking for them (``enabled_by``); the SDK
reads the rest of its configuration (endpoint, headers, sampler, batch delays, resource) from the
same ``OTEL_*`` variables.

Without tracing, nothing here runs per record: a request without a ``traceparent`` header builds no
Kafka headers at all, and one with a valid ``traceparent`` has it passed through unchanged (so a
downstream process that does trace continues the client's trace).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: Kafka record headers as confluent-kafka takes them (and aiokafka/Faust give them back).
Headers = list[tuple[str, bytes]]

_PROPAGATOR = TraceContextTextMapPropagator()
_TRUE = {"true", "1", "yes", "on"}
_tracer: trace.Tracer | None = None  # set by ``setup``: None means this process records no spans


def enabled_by(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` environment asks for trace export: ``OTEL_TRACES_EXPORTER`` set to
    ``otlp`` or ``console``, or (with ``OTEL_TRACES_EXPORTER`` unset) ``OTEL_EXPORTER_OTLP_ENDPOINT``
    or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set; never with ``OTEL_SDK_DISABLED=true`` or
    ``OTEL_TRACES_EXPORTER=none``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(role: str, environ: Mapping[str, str] | None = None) -> bool:
    """Record and export this process's spans if the environment asks for it (``enabled_by``);
    returns whether it does. ``role`` names the process: ``service.name`` is ``jobstream-<role>``
    unless ``OTEL_SERVICE_NAME`` names it; ``jobstream.role`` is always ``role``."""
    global _tracer
    environ = os.environ if environ is None else environ
    if not enabled_by(environ):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporters = [e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()]
    chosen: list[SpanExporter] = []
    for name in exporters:
        if name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            if protocol and protocol != "http/protobuf":
                logger.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: jobstream exports http/protobuf only", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            chosen.append(OTLPSpanExporter())  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*
        elif name == "console":
            chosen.append(ConsoleSpanExporter())
        elif name != "none":
            logger.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console): ignored", name)
    if not chosen:
        return False
    attributes: dict[str, Any] = {"jobstream.role": role}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = f"jobstream-{role}"
    provider = TracerProvider(resource=Resource.create(attributes))  # OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* (delay, queue, batch size)
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("jobstream")
    logger.info("tracing on: exporting spans as %s (%s)", role, ", ".join(exporters))
    return True


def enabled() -> bool:
    """True when this process records spans (``setup`` found ``OTEL_*`` asking for it)."""
    return _tracer is not None


def shutdown() -> None:
    """Export what is buffered and stop (the SDK does this at exit too)."""
    provider = trace.get_tracer_provider()
    stop = getattr(provider, "shutdown", None)
    if stop is not None:
        stop()


# --- a job's context ------------------------------------------------------------------------
class JobTrace:
    """A job's trace context in this process: the Kafka ``headers`` its records carry, the HTTP
    ``traceparent`` naming it, and the local ``span`` when this process records one."""

    __slots__ = ("context", "span", "headers")

    def __init__(self, context: SpanContext, headers: Headers, span: Span | None = None) -> None:
        self.context = context
        self.headers = headers
        self.span = span

    @property
    def traceparent(self) -> str:
        return self.headers[0][1].decode()

    @property
    def trace_id(self) -> str:
        return format(self.context.trace_id, "032x")

    def start(self, name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None) -> None:
        """Start this process's span as a child of the context (when tracing); from now on the
        records carry the span's context."""
        if _tracer is None or self.span is not None:
            return
        parent = trace.set_span_in_context(trace.NonRecordingSpan(self.context))
        self.span = _tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        self.context = self.span.get_span_context()
        self.headers = _headers_of(self.context)

    def end(self, outcome: str | None = None, error: str | None = None) -> None:
        """End the local span (if any) with the job's ``outcome``; ``error`` marks it failed."""
        span, self.span = self.span, None
        if span is None:
            return
        if outcome is not None:
            span.set_attribute("jobstream.outcome", outcome)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()


@contextmanager
def ending_on_error(trace: JobTrace | None) -> Iterator[None]:
    """End ``trace``'s span if the block raises: its outcome is the error's HTTP ``status`` (500 for
    an error without one), marked failed from 500 up. The block ends it itself when it succeeds."""
    if trace is None:
        yield
        return
    try:
        yield
    except BaseException as exc:
        status = getattr(exc, "status", 500)
        trace.end(str(status), type(exc).__name__ if not isinstance(status, int) or status >= 500 else None)
        raise


def _headers_of(context: SpanContext) -> Headers:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(context)))
    headers = [(TRACEPARENT, carrier[TRACEPARENT].encode())]
    if TRACESTATE in carrier:
        headers.append((TRACESTATE, carrier[TRACESTATE].encode()))
    return headers


def _context_of(traceparent: str, tracestate: str | None) -> SpanContext | None:
    """The remote span context a W3C header names; None for a malformed one (ignored, never an error)."""
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return context if context.is_valid else None


def from_http(name: str, headers: Mapping[str, str], attributes: Mapping[str, Any] | None = None) -> JobTrace | None:
    """The trace of an HTTP request that creates jobs (``name``: its route), from its W3C headers.

    Tracing: a span, child of the HTTP server span FastAPI made current (or else of a valid
    ``traceparent``), or the root of a new trace (a malformed ``traceparent`` is ignored).
    Not tracing: a valid ``traceparent`` passed through, else None
    (no headers are built)."""
    traceparent = headers.get(TRACEPARENT)
    if _tracer is None:
        if traceparent is None:
            return None
        context = _context_of(traceparent, headers.get(TRACESTATE))
        return None if context is None else JobTrace(context, _headers_of(context))
    parent = None  # the current span: FastAPI's HTTP server span continues a valid traceparent itself
    if traceparent is not None and not trace.get_current_span().get_span_context().is_valid:
        remote = _context_of(traceparent, headers.get(TRACESTATE))
        if remote is not None:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    span = _tracer.start_span(name, context=parent, kind=SpanKind.INTERNAL, attributes=attributes)
    context = span.get_span_context()
    return JobTrace(context, _headers_of(context), span)


def from_kafka(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None) -> JobTrace | None:
    """The trace a consumed record carries in its headers (None: none, or malformed)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    traceparent = tracestate = None
    for key, value in pairs:
        if key == TRACEPARENT and value:
            traceparent = value.decode("latin-1")
        elif key == TRACESTATE and value:
            tracestate = value.decode("latin-1")
    if traceparent is None:
        return None
    context = _context_of(traceparent, tracestate)
    return None if context is None else JobTrace(context, _headers_of(context))


class ConsumedSpans:
    """One span per distinct job context among consumed records (a batch of the sink, of the SSE
    gateway's tail): started when the batch is taken, ended once it was handled."""

    __slots__ = ("_spans",)

    def __init__(self, spans: list[Span]) -> None:
        self._spans = spans

    def end(self, error: str | None = None) -> None:
        spans, self._spans = self._spans, []
        for span in spans:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()


def consumed(name: str, messages: Iterable[Any], attributes: Mapping[str, Any] | None = None) -> ConsumedSpans | None:
    """Spans for the traced records among confluent-kafka ``messages`` (None when not tracing or
    when none is traced). Call only when ``enabled()``: it reads every record's headers."""
    tracer = _tracer
    if tracer is None:
        return None
    parents: dict[tuple[int, int], SpanContext] = {}
    counts: dict[tuple[int, int], int] = {}
    for message in messages:
        job = from_kafka(message.headers())
        if job is not None:
            key = (job.context.trace_id, job.context.span_id)
            parents[key] = job.context
            counts[key] = counts.get(key, 0) + 1
    if not parents:
        return None
    spans = [
        tracer.start_span(
            name,
            context=trace.set_span_in_context(trace.NonRecordingSpan(context)),
            kind=SpanKind.CONSUMER,
            attributes={**(attributes or {}), "messaging.batch.message_count": counts[key]},
        )
        for key, context in parents.items()
    ]
    return ConsumedSpans(spans)


def current_trace_id() -> str | None:
    """The trace id of the span current in this context (for log lines), or None."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
