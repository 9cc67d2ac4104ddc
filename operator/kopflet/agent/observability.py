"""Logs, health and Prometheus metrics of the agent process.

Logging: the engines log through loguru (proxy) and the standard library (runtime); both
end up in one loguru sink on stderr, as text or as one JSON object per line.

Health: ``/healthz`` answers 200 when every check passes and 503 with the failing ones
otherwise (one line per check either way); ``/livez`` answers as long as the event loop
does. Metrics: ``/metrics`` in the Prometheus text format, on a port of its own so that it
can be scraped without exposing the health endpoint, or the other way round.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

LOG_FORMATS: Final = ("text", "json")


class _ToLoguru(logging.Handler):
    """Standard-library records into loguru, keeping the caller's level and module."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).bind(module=record.name).log(
            level, record.getMessage()
        )


def setup_logging(*, log_format: str, level: str = "INFO", node: str = "") -> None:
    logger.remove()
    if log_format == "json":
        logger.add(sys.stderr, level=level, serialize=True)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format="{time:YYYY-MM-DDTHH:mm:ss.SSS} {level: <7} "
            + (f"[{node}] " if node else "")
            + "{name}: {message}",
        )
    logging.basicConfig(handlers=[_ToLoguru()], level=logging.INFO, force=True)
    # The HTTP libraries narrate every request at INFO.
    for noisy in ("aiohttp.access", "urllib3", "docker", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass(frozen=True)
class HealthCheck:
    name: str
    #: ``(ok, detail)``; must not block.
    check: Callable[[], tuple[bool, str]]


def health_report(checks: Iterable[HealthCheck]) -> tuple[bool, str]:
    """All checks passed, and one line per check. Pure (given the checks)."""
    lines, healthy = [], True
    for item in checks:
        try:
            ok, detail = item.check()
        except Exception as exc:  # a broken check is a failed one, not a crashed endpoint
            ok, detail = False, f"check raised {exc!r}"
        healthy = healthy and ok
        lines.append(f"[{'+' if ok else '-'}]{item.name} {'ok' if ok else 'failed'}: {detail}")
    return healthy, "\n".join(lines) + "\n"


def health_app(checks: list[HealthCheck]) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        ok, text = health_report(checks)
        return web.Response(status=200 if ok else 503, text=text)

    async def livez(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    return app


def metrics_app() -> web.Application:
    async def metrics(_request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application, *, host: str, port: int, what: str) -> web.AppRunner | None:
    """Serve ``app``; a port that is taken is logged, not fatal (the node's work matters
    more than its endpoints)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host=host, port=port).start()
    except OSError as exc:
        logger.error("{} endpoint not served on {}:{}: {}", what, host, port, exc)
        await runner.cleanup()
        return None
    logger.info("{} endpoint on {}:{}", what, host, port)
    return runner
