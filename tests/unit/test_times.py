"""controller/model/times.py: the one home of timestamp formats (Kubernetes Time and MicroTime,
the event store's milliseconds) and of their parsers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from controller.errors import ValidationError
from controller.model.times import (
    format_ms,
    now_ms,
    parse_ms,
    parse_rfc3339,
    parse_time,
    rfc3339,
    rfc3339_micro,
)

MOMENT = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_formats() -> None:
    assert rfc3339(MOMENT) == "2024-05-01T12:00:00Z"
    assert rfc3339_micro(MOMENT) == "2024-05-01T12:00:00.123456Z"
    assert format_ms(int(MOMENT.timestamp() * 1000)) == "2024-05-01T12:00:00.123Z"
    # Another zone is printed in UTC.
    assert rfc3339(MOMENT.astimezone(timezone(timedelta(hours=2)))) == "2024-05-01T12:00:00Z"


def test_every_format_reads_back() -> None:
    for text in (rfc3339(MOMENT), rfc3339_micro(MOMENT), format_ms(1714564800123)):
        parsed = parse_rfc3339(text)
        assert parsed is not None and parsed.tzinfo is not None
        assert parse_ms(text) == int(parsed.timestamp() * 1000)
    assert parse_rfc3339("2024-05-01T12:00:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize("bad", [None, "", "yesterday", 42, "2024-13-01T00:00:00Z"])
def test_unreadable_is_none_for_kubernetes_times(bad: object) -> None:
    assert parse_rfc3339(bad) is None and parse_ms(bad) is None


def test_api_times_name_the_field() -> None:
    assert now_ms() - 15 * 60_000 - 1000 <= parse_time("15m", "since") <= now_ms() - 15 * 60_000
    with pytest.raises(ValidationError) as caught:
        parse_time("soon", "until")
    assert caught.value.details["field"] == "until"
    with pytest.raises(ValidationError, match="out of range"):
        parse_time("99999999999999999999d", "since")
