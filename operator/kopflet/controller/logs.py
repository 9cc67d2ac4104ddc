"""Logging: loguru for our own lines, the standard library's records (kopf, aiohttp) routed into
it, text for people or one JSON object per line for machines (``--log-format json``)."""

from __future__ import annotations

import logging
import sys
from typing import Literal

from loguru import logger

LogFormat = Literal["text", "json"]

_TEXT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level:<7} {name}: {message}"


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(*, format: LogFormat, level: str = "INFO") -> None:
    logger.remove()
    if format == "json":
        logger.add(sys.stderr, level=level, serialize=True)
    else:
        logger.add(sys.stderr, level=level, format=_TEXT)
    logging.basicConfig(handlers=[_ToLoguru()], level=logging.INFO, force=True)
    # kopf narrates every watch and handler call at INFO/DEBUG: keep its warnings and errors.
    for noisy in ("kopf", "aiohttp.access", "kubernetes.client.rest"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
