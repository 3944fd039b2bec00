"""The metrics on a port of their own: prometheus-client's WSGI app in a thread-per-connection
server whose connections time out, so idle or trickling clients cannot pile up threads."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


def serve_metrics(registry: CollectorRegistry, host: str, port: int,
                  idle_timeout: float) -> Callable[[], None]:
    """Serve ``registry`` on ``host:port`` (any path) until the returned stop is called.

    prometheus-client's own ``start_http_server`` never times a connection out: a client that
    connects and sends nothing holds a thread for ever. Here each socket read waits at most
    ``idle_timeout`` seconds, then the connection is closed.
    """

    class Handler(WSGIRequestHandler):
        timeout = idle_timeout

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes are not logged (the access log is the proxy's)."""

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server: WSGIServer = make_server(host, port, make_wsgi_app(registry), Server,
                                     handler_class=Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-port", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()
    return stop
