"""The API's access log: one JSON line per request on stderr, written when the response leaves.

A line says who (the token's name, or `anonymous`), the method, the route as declared (never
the path as sent, the query string or the body: they can hold card data), the status, the
latency and the caller's request id (X-Request-ID, when it looks like one).
"""

from __future__ import annotations

import logging
import re
import sys
import time

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

from serving.auth import ANONYMOUS

LOGGER = "fraudflow.access"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HANDLER_MARK = "_fraudflow_access_handler"


def access_logger() -> logging.Logger:
    """The access logger with its JSON handler on stderr (added once per process: every app
    of the process shares it)."""
    logger = logging.getLogger(LOGGER)
    if not any(getattr(h, _HANDLER_MARK, False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(json_formatter())
        setattr(handler, _HANDLER_MARK, True)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # gunicorn's or the root handlers would print it a second time
    return logger


def json_formatter() -> JsonFormatter:
    return JsonFormatter(["levelname", "name", "message"], timestamp=True)


def install(app: Flask) -> None:
    """Time every request of `app` and log it when its response is ready."""
    logger = access_logger()

    @app.before_request
    def _start_clock() -> None:
        g.access_started = time.perf_counter()

    @app.after_request
    def _log_request(response: Response) -> Response:
        started = g.get("access_started")
        request_id = request.headers.get("X-Request-ID", "")
        logger.info(
            "request",
            extra={
                "who": g.get("caller", ANONYMOUS),
                "method": request.method,
                "route": request.url_rule.rule if request.url_rule else None,
                "status": response.status_code,
                "latency_ms": (
                    round((time.perf_counter() - started) * 1000, 3) if started else None
                ),
                "request_id": request_id if REQUEST_ID.match(request_id) else None,
            },
        )
        return response
