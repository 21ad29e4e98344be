"""Timestamps: the one home of every format conductor writes and every parser it reads.

Kubernetes writes RFC 3339 in UTC with a "Z": whole seconds for `Time` (conditions,
Events' first/last timestamps), microseconds for `MicroTime` (Lease renewals). The event
store and the API speak milliseconds since the epoch inside and RFC 3339 with milliseconds
outside, and accept a duration back from now ("15m", "7d") wherever a time is asked for.
Pure: no I/O; "now" is read here only by the functions whose name says so.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from controller.errors import ValidationError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
# What a datetime can hold: every time accepted is one `format_ms` can print back.
_MIN_MS = int((datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) / timedelta(milliseconds=1))
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def now() -> datetime:
    return datetime.now(UTC)


def now_ms() -> int:
    """Milliseconds since the epoch, now."""
    return time.time_ns() // 1_000_000


def rfc3339(moment: datetime) -> str:
    """Whole seconds, UTC, "Z": a Kubernetes `Time` (2024-05-01T12:00:00Z)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339() -> str:
    return rfc3339(now())


def rfc3339_micro(moment: datetime) -> str:
    """Microseconds, UTC, "Z": a Kubernetes `MicroTime` (2024-05-01T12:00:00.123456Z)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339_ms(moment: datetime) -> str:
    """Milliseconds, UTC, "Z" (log lines)."""
    return format_ms(int(moment.timestamp() * 1000))


def format_ms(ms: int) -> str:
    """Milliseconds since the epoch as RFC 3339 UTC with milliseconds."""
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_rfc3339(text: object) -> datetime | None:
    """An RFC 3339 timestamp as the API server writes it (any precision, "Z" or an
    offset; naive ones are UTC); None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_time(value: datetime | str, name: str = "timestamp") -> int:
    """An RFC 3339 timestamp (naive ones are UTC), a datetime, or a duration ago ("15m",
    "2h", "7d") as milliseconds since the epoch; ValidationError naming `name` if not."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        rel = _RELATIVE.match(text)
        if rel:
            ago = float(rel.group(1)) * _UNIT_MS[rel.group(2)]
            # "99999999999999999999d" is well-formed but before year 1 (or infinite): a
            # client error naming the field, not an overflow in SQLite or int().
            if not ago <= now_ms() - _MIN_MS:
                raise ValidationError(f"{name}: duration out of range: {value!r}",
                                      {"field": name, "value": value})
            return now_ms() - int(ago)
        try:
            dt = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"{name}: not an RFC 3339 timestamp: {value!r}",
                                  {"field": name, "value": value}) from None
    else:
        raise ValidationError(f"{name}: not an RFC 3339 timestamp: {value!r}",
                              {"field": name, "value": repr(value)})
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return int(dt.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        raise ValidationError(f"{name}: timestamp out of range: {value!r}",
                              {"field": name, "value": str(value)}) from None


def parse_ms(value: object) -> int | None:
    """A Kubernetes Time/MicroTime as milliseconds, or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_time(value, "timestamp")
    except ValidationError:
        return None


__all__ = ["format_ms", "now", "now_ms", "now_rfc3339", "parse_ms", "parse_rfc3339",
           "parse_time", "rfc3339", "rfc3339_micro", "rfc3339_ms"]
