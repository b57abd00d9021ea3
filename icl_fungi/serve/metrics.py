"""Prometheus metrics of the service, in a registry of its own (one per app, so tests can run several).

Labels are the route (one of the app's paths, or ``other``), the method and the status code: never a
header, a query text or the API key.

Example:
    >>> m = Metrics(["/v1/retrieve"])
    >>> m.observe("/v1/retrieve", "POST", 200, 0.012)
    >>> m.observe("/nope", "GET", 404, 0.001)
    >>> text = m.render().decode()
    >>> 'icl_fungi_requests_total{method="POST",route="/v1/retrieve",status="200"} 1.0' in text
    True
    >>> 'icl_fungi_request_errors_total{method="GET",route="other",status="404"} 1.0' in text
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """Requests, errors and latency per route; pool size, readiness and forward-pass batch sizes."""

    def __init__(self, routes: Iterable[str]) -> None:
        self.routes = frozenset(routes)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("icl_fungi_requests", "HTTP requests answered", ["route", "method", "status"], registry=r)
        self.errors = Counter("icl_fungi_request_errors", "HTTP requests answered with a 4xx or 5xx",
                              ["route", "method", "status"], registry=r)
        self.latency = Histogram("icl_fungi_request_seconds", "Time from request to response", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("icl_fungi_requests_in_flight", "HTTP requests being answered now (this scrape included)", registry=r)
        self.pool_size = Gauge("icl_fungi_pool_size", "Examples in the pool", registry=r)
        self.ready = Gauge("icl_fungi_ready", "1 once the retriever is loaded and its add log replayed", registry=r)
        self.batch_queries = Histogram("icl_fungi_batch_queries", "Queries per forward pass", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("icl_fungi_batch_seconds", "Time of one forward pass and search",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.adds = Counter("icl_fungi_examples_added", "Examples added and acknowledged (durable)", registry=r)
        self.queue = Gauge("icl_fungi_queue_queries", "Queries waiting for a forward pass", registry=r)
        self.rejected = Counter("icl_fungi_rejected", "Requests refused with 503 because the query queue was full", registry=r)

    def method(self, method: str) -> str:
        """The method label: a standard HTTP method, else ``other`` (a client cannot make up label values)."""
        return method if method in _METHODS else "other"

    def route(self, path: str) -> str:
        """The route label of a request path: the path itself when the app has it, else ``other``."""
        return path if path in self.routes else "other"

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        route, method = self.route(path), self.method(method)
        self.requests.labels(route, method, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, n_queries: int, seconds: float) -> None:
        """Count one forward pass of ``n_queries`` queries."""
        self.batch_queries.observe(n_queries)
        self.batch_seconds.observe(seconds)

    def track_pool(self, size: Callable[[], float]) -> None:
        """Report ``size()`` as the pool size at each scrape."""
        self.pool_size.set_function(size)

    def track_queue(self, depth: Callable[[], float]) -> None:
        """Report ``depth()`` as the query queue's depth at each scrape."""
        self.queue.set_function(depth)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
