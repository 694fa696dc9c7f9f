"""The HTTP edge: a WSGI app under ``hoptrace.wsgi.TransactionMiddleware`` in wsgiref's server.

``POST /orders/<n>`` starts a transaction (a SERVER span), logs one line, and hands the order
to the Celery task ``e2e.relay``. The response body says which transaction and trace it
started; the transaction ID is also in the ``X-Transaction-ID`` response header.

Run: ``python -m e2e_apps.web`` (see ``telemetry`` for the environment). It logs
``listening on 127.0.0.1:<port>`` once it serves.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import Celery  # type: ignore[import-untyped]

import hoptrace
import hoptrace.celery
from hoptrace.wsgi import TransactionMiddleware

from . import telemetry

log = logging.getLogger("e2e.web")

celery_app = Celery("e2e-web", broker=telemetry.CELERY_BROKER, set_as_current=False)
celery_app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)


def orders(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Accept ``POST /orders/<n>``: log it and send it on to the Celery worker."""
    path = str(environ.get("PATH_INFO", ""))
    if environ.get("REQUEST_METHOD") != "POST" or not path.startswith("/orders/"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    order = path.removeprefix("/orders/")
    log.info("order %s accepted", order)
    result = celery_app.send_task(telemetry.TASK_NAME, args=(order,),
                                  queue=telemetry.CELERY_QUEUE, ignore_result=True)
    body = json.dumps({
        "order": order,
        "task_id": result.id,
        "transaction_id": hoptrace.current_transaction_id(),
        "trace_id": hoptrace.current_trace_id(),
    }).encode()
    start_response("202 Accepted", [("Content-Type", "application/json")])
    return [body]


class QuietHandler(WSGIRequestHandler):
    """No access-log lines on stderr: the app logs its own, with the transaction ID."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    provider = telemetry.start("web")
    hoptrace.celery.instrument(celery_app)
    stop = telemetry.StopFlag()
    server: WSGIServer = make_server("127.0.0.1", 0, TransactionMiddleware(orders),
                                     handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    log.info("listening on 127.0.0.1:%d", server.server_port)
    try:
        stop.event.wait()
    finally:
        server.shutdown()
        server.server_close()
        telemetry.stop(provider)
        log.info("stopped")


if __name__ == "__main__":
    main()
