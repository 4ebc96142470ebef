"""The service's own Prometheus metrics, shown at /metrics beside BentoML's (request
counts and latency per endpoint and status: ``bentoml_service_request_total`` and
``bentoml_service_request_duration_seconds``).

Ours add what BentoML cannot know: predictions by the modality pattern used, errors by
kind (bad input, refused token, overload, upstream DICOMweb failure; whole requests and
single cases of a batch alike), cases per /predict/batch call, and per model run the
calls merged into it and its cases (one /predict/batch call brings many cases). Made
on first use: BentoML sets the worker's Prometheus multiprocess folder after this
module is imported, and a metric made before that is never shown."""

from __future__ import annotations

import functools
import typing as t
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceMetrics:
    predictions: t.Any  # Counter, label modalities ("image+genomics", ...)
    errors: t.Any  # Counter, labels kind and route
    batch_cases: t.Any  # Histogram of cases per /predict/batch request
    model_seconds: t.Any  # Histogram of the model service call, by route
    model_batch_rows: t.Any  # Histogram of cases per model run (in the model service)
    model_batch_calls: t.Any  # Histogram of calls merged into one model run
    model_calls: t.Any  # Counter of the API service's model calls, by transport ("socket", "http")

    def prediction(self, modalities: t.Sequence[str]) -> None:
        self.predictions.labels(modalities="+".join(modalities)).inc()

    def error(self, kind: str, route: str) -> None:
        self.errors.labels(kind=kind, route=route).inc()

    def model_call(self, transport: str) -> None:
        self.model_calls.labels(transport=transport).inc()

    def model_run(self, calls: int, rows: int) -> None:
        self.model_batch_calls.observe(calls)
        self.model_batch_rows.observe(rows)


@functools.lru_cache(maxsize=1)
def service_metrics() -> ServiceMetrics:
    from prometheus_client import Counter, Histogram

    return ServiceMetrics(
        predictions=Counter("radfusion_predictions", "Predictions served, by the modalities used", ["modalities"]),
        errors=Counter("radfusion_errors", "Requests or batch cases refused or failed, by kind", ["kind", "route"]),
        batch_cases=Histogram(
            "radfusion_batch_request_cases",
            "Cases per /predict/batch request",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        ),
        model_seconds=Histogram(
            "radfusion_model_call_seconds",
            "Time waiting for the model service (batching included)",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ),
        model_batch_rows=Histogram(
            "radfusion_model_batch_rows",
            "Cases per ONNX Runtime run in the model service",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        ),
        model_batch_calls=Histogram(
            "radfusion_model_batch_calls",
            "Model service calls merged into one ONNX Runtime run",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        ),
        model_calls=Counter(
            "radfusion_model_calls", "The API service's calls of the model service, by transport", ["transport"]
        ),
    )


def count_refusal(kind: str, path: str) -> None:
    """The ASGI middleware's callback: a request refused before it reached an API."""
    service_metrics().error(kind, path)
