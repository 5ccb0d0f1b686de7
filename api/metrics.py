"""The API process's own metrics, on its ``/metrics``: requests by endpoint and status, their
latency, and the requests in flight. Each process counts its own (Prometheus scrapes each
API process, as it scrapes each worker's host); the nights' figures, counter photos
included, stay the metrics endpoint's (``refund-sorter metrics-server``), read from SQL.

Labels stay bounded: the endpoint is the route's template (``/v1/predictions/{id}``), never
the path a client sent, and anything no route matched is ``other``.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From a photo answered from its row (milliseconds) to one that waited the whole
# REFUND_SORTER_API_WAIT_SECONDS.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class ApiMetrics:
    """The three metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "refund_sorter_api_requests",
            "HTTP requests the returns counter's API answered, by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "refund_sorter_api_request_duration_seconds",
            "Time from a request's arrival to its answer, by endpoint.",
            ["endpoint"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "refund_sorter_api_requests_in_flight",
            "Requests the API process is answering now.",
            registry=self.registry,
        )

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
