"""The HTTP side of ``refund-sorter metrics-server``: ``/metrics`` from prometheus-client's
WSGI app over a registry that holds only the project's collector (no process metrics of the
server itself), behind basic auth when REFUND_SORTER_METRICS_BASIC_AUTH is set, served by
the standard library's WSGI server, one thread per request so a slow scrape blocks no other.
"""

from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from monitoring.metrics import SorterCollector
from refund_sorter.basic_auth import allowed_pairs, authorized
from refund_sorter.config import Settings

PATH = "/metrics"
REALM = "refund-sorter metrics"


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up a stop


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:
        # One line per scrape, every 15 s, would bury the scrapes' own warnings.
        pass


def metrics_app(settings: Settings):
    """The WSGI application: ``/metrics``, behind basic auth when the setting asks for it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SorterCollector(settings))
    metrics = make_wsgi_app(registry)
    allowed = allowed_pairs(settings.metrics_basic_auth)

    def app(environ, start_response):
        if allowed and not authorized(environ.get("HTTP_AUTHORIZATION", ""), allowed):
            start_response(
                "401 Unauthorized",
                [
                    ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
                    ("Content-Type", "text/plain; charset=utf-8"),
                ],
            )
            return [b"401: this endpoint needs a user and password (basic auth)\n"]
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"404: the metrics are at {PATH}\n".encode()]
        return metrics(environ, start_response)

    return app


def metrics_server(settings: Settings, address: str, port: int) -> WSGIServer:
    """A server bound to ``address``:``port``, not yet serving (``serve_forever``)."""
    return make_server(
        address,
        port,
        metrics_app(settings),
        server_class=ThreadingServer,
        handler_class=QuietHandler,
    )
