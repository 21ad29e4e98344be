"""Log output, in one place: human text (default) or JSON lines for log pipelines.

With `--log-format json` (CONDUCTOR_LOG_FORMAT=json) every line, conductor's and
gunicorn's alike, is one JSON object: time, level, logger, message, and the fields a
record carries among `FIELDS` (the instance and namespace on every line; operation,
revision, object, service, reason where a pass or an object is concerned), so a pipeline
can filter without parsing messages. Records carry those fields through `extra=`.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from controller.model.times import format_ms

FIELDS = ("instance", "namespace", "operation", "trigger", "revision", "object", "service",
          "reason")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": format_ms(int(record.created * 1000)),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()}
        for name in FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class ContextFilter(logging.Filter):
    """Stamps the process's instance and namespace on every record that has none."""

    def __init__(self, instance: str = "", namespace: str = "") -> None:
        super().__init__()
        self.instance = instance
        self.namespace = namespace

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "instance", ""):
            record.instance = self.instance
        if not getattr(record, "namespace", ""):
            record.namespace = self.namespace
        return True


def setup(fmt: str = "text", verbose: bool = False, instance: str = "",
          namespace: str = "") -> None:
    """Configure the root logger (replacing what was there)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter(instance, namespace))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def gunicorn_config(instance: str = "", namespace: str = "") -> dict[str, Any]:
    """gunicorn's `logconfig_dict` for JSON lines: its error and access logs through the
    same formatter (access lines on stdout, the rest on stderr, as gunicorn does)."""
    context = {"()": "controller.logs.ContextFilter", "instance": instance,
               "namespace": namespace}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": "controller.logs.JsonFormatter"}},
        "filters": {"context": context},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "json",
                        "filters": ["context"], "stream": "ext://sys.stdout"},
            "error_console": {"class": "logging.StreamHandler", "formatter": "json",
                              "filters": ["context"], "stream": "ext://sys.stderr"}},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"],
                               "propagate": False, "qualname": "gunicorn.error"},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"],
                                "propagate": False, "qualname": "gunicorn.access"}},
        "root": {"level": "INFO", "handlers": ["error_console"]},
    }
