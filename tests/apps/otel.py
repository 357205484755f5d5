"""The canvas test app with OpenTelemetry's Celery instrumentation, as a user would run it.

Finished spans go to the SDK's in-memory exporter, which also leaves each one
in the Redis list ``spans`` (name, parent, attributes) for the test process.
"""

from __future__ import annotations

import json

from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.apps.canvas import _redis, app  # noqa: F401 - the app the worker serves


class RecordingExporter(InMemorySpanExporter):
    """The in-memory exporter, telling the test what it holds."""

    def export(self, spans):
        for span in spans:
            _redis.rpush(
                "spans",
                json.dumps(
                    {
                        "name": span.name,
                        "span_id": span.context.span_id,
                        "parent_id": span.parent.span_id if span.parent else None,
                        "attributes": {key: str(value) for key, value in span.attributes.items()},
                    }
                ),
            )
        return super().export(spans)


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(RecordingExporter()))
trace.set_tracer_provider(provider)
CeleryInstrumentor().instrument(tracer_provider=provider)
