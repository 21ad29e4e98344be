"""The access log's modes (CONDUCTOR_API_ACCESS_LOG; serving.access_logger): gunicorn's own
logger, its lines written for every request (on), none (off: gunicorn's protocol is told
there is no access log, so it builds nothing per request), or only answers of 400 and up
(errors, the default). Driven through gunicorn's Logger API as its protocol calls it."""

from __future__ import annotations

import datetime
import logging

import pytest
from gunicorn.config import Config as GunicornConfig

from controller.config import Config, ConfigError
from controller.serving import AccessLogger, access_logger


class Response:
    def __init__(self, status: int | str) -> None:
        self.status = status
        self.sent = 2
        self.headers: list[tuple[str, str]] = []


ENVIRON = {"REQUEST_METHOD": "GET", "RAW_URI": "/api/services/health",
           "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/api/services/health",
           "QUERY_STRING": "", "REMOTE_ADDR": "127.0.0.1"}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def logged(mode: str, statuses: list[int | str], json_format: bool = False) -> list[str]:
    """The access lines `mode` writes for answers of these statuses."""
    cfg = GunicornConfig()
    cfg.set("accesslog", None if json_format else "-")
    if json_format:  # the JSON log format configures handlers, not an access log file
        cfg.set("logconfig_dict", {"version": 1, "disable_existing_loggers": False})
    log: AccessLogger = access_logger(mode)(cfg)
    lines = Lines()
    log.access_log.addHandler(lines)
    for status in statuses:
        if log.access_log_enabled:  # what gunicorn's protocol asks before anything
            log.access(Response(status), {}, ENVIRON, datetime.timedelta(milliseconds=3))
    log.access_log.removeHandler(lines)
    return lines.lines


def test_on_writes_every_request() -> None:
    assert len(logged("on", [200, 404, 500])) == 3


def test_errors_writes_only_answers_of_400_and_up() -> None:
    lines = logged("errors", [200, 204, 304, "200 OK", 400, "401 Unauthorized", 503])
    assert len(lines) == 3
    assert all('"GET /api/services/health HTTP/1.1"' in line for line in lines)
    assert [line.split('" ')[1].split()[0] for line in lines] == ["400", "401", "503"]


@pytest.mark.parametrize("json_format", [False, True])
def test_off_writes_nothing_and_gunicorn_builds_nothing(json_format: bool) -> None:
    assert logged("off", [200, 500], json_format) == []
    cfg = GunicornConfig()
    cfg.set("logconfig_dict", {"version": 1, "disable_existing_loggers": False})
    assert not access_logger("off")(cfg).access_log_enabled
    assert access_logger("errors")(cfg).access_log_enabled


def test_the_setting_defaults_to_errors_and_refuses_other_values() -> None:
    assert Config.from_env({}).api.access_log == "errors"
    assert Config.from_env({"CONDUCTOR_API_ACCESS_LOG": "off"}).api.access_log == "off"
    with pytest.raises(ConfigError, match="CONDUCTOR_API_ACCESS_LOG"):
        Config.from_env({"CONDUCTOR_API_ACCESS_LOG": "some"})
    with pytest.raises(ValueError):
        access_logger("some")
