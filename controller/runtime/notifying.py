"""Notifications out: tell a webhook or a chat when something breaks, recovers or ships.

Nothing is sent from inside a pass or the health reporter. The durable event store
(`events.EventStore`) is the only input: each receiver has a worker that reads the stored
events after its cursor, turns them into notifications with the table `RULES`, and moves
its cursor (and the little state the rules keep) forward in the event store's database
(the SQLite file, or the PostgreSQL every replica shares) only once the receiver has taken
the message. So a receiver that is down, or a controller restart,
loses nothing: the worker retries (tenacity, exponential backoff, on 5xx, 408/429,
timeouts and refused connections) for as long as it takes, then resumes where it stopped.
Delivery is at least once: a crash between the receiver's answer and the cursor's commit
sends that one message again, with the same `X-Conductor-Delivery` id.

What is worth a message (`RULES`, a small table to extend): an instance's service turning
unhealthy and recovering (the `HealthReporter`'s events: `error` with details.status
`unhealthy`, `success` `Recovered`), the reconcile pass failing (`ReconcileFailed`) and
succeeding again, and a new revision applied (`ReconcileSucceeded` whose revision differs
from the last one). Each rule moves a state (per instance, or per instance and service;
an instance is its namespace and name, so same-named instances of two namespaces never
share one) and a message goes out only when the state changes: a pass failing fifty times
in a row is one message, its recovery another. Per receiver: filters (instances by `name`
or `namespace/name`, services, kinds, a minimum severity) and a rate limit that delays
messages, never drops them.

Receivers come from a YAML file (`CONDUCTOR_NOTIFY_RECEIVERS_FILE`):

    receivers:
      - name: ops                          # unique; the cursor's key
        type: webhook                      # JSON body, HMAC-SHA256 signature header
        urlFile: /etc/conductor/notify/ops-url
        secretFile: /etc/conductor/notify/ops-hmac
      - name: chat
        type: slack                        # Slack-compatible incoming webhook: {"text": ...}
        urlFile: /etc/conductor/notify/slack-url
        instances: [default, team-a/web]   # filters, all optional
        severity: error                    # info (default), warning or error
        kinds: [unhealthy, recovered]
        ratePerMinute: 10

URLs and keys live only in files (a mounted Secret), read at each delivery, so rotating one
needs no restart; they never reach logs or events.

Only the leader speaks. With a store of its own (SQLite), a follower keeps its cursors
moving without sending, so it does not resend the past when it comes to lead. With a
shared store (PostgreSQL) the cursor is the leader's: a follower leaves it alone and, when
it comes to lead, starts from where the old leader stopped (a leader that loses the lease
mid-page stops before the next message, its cursor before it), so a failover neither loses
nor repeats a message, except the one a leader died sending (at least once, as above).
A cursor never moves back (two leaders for a moment cannot undo each other's progress).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tenacity
import yaml

from controller.adapters.store.events import Event, EventStore
from controller.adapters.store.sql import Database, Migration
from controller.config import NotificationSettings
from controller.errors import ConductorError

log = logging.getLogger(__name__)

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")
RECEIVER_TYPES = ("webhook", "slack")
SIGNATURE_HEADER = "X-Conductor-Signature"  # "sha256=<hex HMAC-SHA256 of the body>"
DELIVERY_HEADER = "X-Conductor-Delivery"  # "<event id>-<kind>": the same on a resend
PAGE = 100  # events read per query
SEED_EVENTS = 1000  # a new receiver's state is replayed from this many recent events
_TYPES = ["error", "success"]  # every rule reads one of these

STORE = "notify"
_CURSORS = """
CREATE TABLE IF NOT EXISTS notify_cursors (
    receiver TEXT PRIMARY KEY,
    last_id BIGINT NOT NULL,    -- the newest event this receiver is done with
    state TEXT NOT NULL,        -- the rules' state after it (JSON)
    updated_ms BIGINT NOT NULL
)"""
# A SQLite file from before the version table has the table already (INTEGER columns:
# the same in SQLite); CREATE ... IF NOT EXISTS adopts it.
MIGRATIONS = (Migration.same(1, _CURSORS),)


class NotifyConfigError(ConductorError):
    """The receivers file cannot be used; the message names the file and the problem."""

    code = "validation_error"


# -- what is worth a message ---------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One message for the receivers, from one stored event."""

    kind: str
    severity: Severity
    instance: str
    service: str
    title: str
    message: str
    event: Event
    namespace: str = ""  # the instance's ("" when its event did not say)

    @property
    def delivery(self) -> str:
        return f"{self.event.id}-{self.kind}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.delivery, "kind": self.kind, "severity": self.severity,
                "instance": self.instance, "namespace": self.namespace,
                "service": self.service, "title": self.title,
                "message": self.message, "timestamp": self.event.timestamp,
                "revision": str(self.event.details.get("revision", "")),
                "event": self.event.to_dict()}


@dataclass(frozen=True)
class Rule:
    """Events that `match` put the `track`ed state (of an instance, or of a service of
    it) into `state(event)`; a change is a notification of `kind` (only from the states in
    `after`, when given). Rules of one track share the state: a recovery follows a
    failure."""

    kind: str
    severity: Severity
    match: Callable[[Event], bool]
    track: Literal["health", "pass", "revision"]
    state: Callable[[Event], str]
    title: Callable[[str, str, Event], str]
    after: tuple[str, ...] = ()  # e.g. a recovery is news only after a failure


def _health_failed(e: Event) -> bool:
    return e.type == "error" and e.details.get("status") == "unhealthy" and \
        "object" in e.details and bool(e.service)


def _revision(e: Event) -> str:
    return str(e.details.get("revision") or "")


def _where(instance: str, service: str) -> str:
    return f"{instance}/{service}" if service else instance


RULES: tuple[Rule, ...] = (
    Rule("unhealthy", "error", _health_failed, "health", lambda _e: "unhealthy",
         lambda i, s, _e: f"{_where(i, s)} is unhealthy"),
    Rule("recovered", "info",
         lambda e: e.type == "success" and e.reason == "Recovered" and bool(e.service),
         "health", lambda _e: "healthy", lambda i, s, _e: f"{_where(i, s)} recovered",
         after=("unhealthy",)),
    Rule("pass_failed", "error", lambda e: e.type == "error" and e.reason == "ReconcileFailed",
         "pass", lambda _e: "failing", lambda i, _s, _e: f"{i}: reconcile failed"),
    Rule("pass_recovered", "info",
         lambda e: e.type == "success" and e.reason == "ReconcileSucceeded",
         "pass", lambda _e: "ok", lambda i, _s, _e: f"{i}: reconcile succeeds again",
         after=("failing",)),
    Rule("revision_applied", "info",
         lambda e: e.type == "success" and e.reason == "ReconcileSucceeded" and
         bool(_revision(e)), "revision", _revision,
         lambda i, _s, e: f"{i}: revision {_revision(e)[:12]} applied"),
)
KINDS = tuple(r.kind for r in RULES)


def classify(state: dict[str, str], event: Event, instance: str) -> list[Notification]:
    """The notifications `event` makes, given and updating `state` (key -> last state).

    The event's own instance decides where it happened; `instance` (the controller's) is
    for events stored before events carried one."""
    where = event.instance or str(event.details.get("instance") or instance)
    namespace = event.namespace if event.instance else ""
    out: list[Notification] = []
    for rule in RULES:
        if not rule.match(event):
            continue
        service = event.service if rule.track == "health" else ""
        key = f"{rule.track}|{namespace}/{where}|{service}"
        new, old = rule.state(event), state.get(key)
        state[key] = new
        if new == old or (rule.after and old not in rule.after):
            continue
        out.append(Notification(rule.kind, rule.severity, where, service,
                                rule.title(where, service, event), event.message, event,
                                namespace))
    return out


# -- receivers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receiver:
    name: str
    type: Literal["webhook", "slack"]
    url_file: Path
    secret_file: Path | None = None
    instances: frozenset[str] = frozenset()  # `name` or `namespace/name`; empty: any
    services: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    severity: Severity = "info"
    rate_per_minute: float = 30.0

    def wants(self, note: Notification) -> bool:
        return (not self.instances or note.instance in self.instances
                or f"{note.namespace}/{note.instance}" in self.instances) and \
            (not self.services or note.service in self.services) and \
            (not self.kinds or note.kind in self.kinds) and \
            SEVERITIES.index(note.severity) >= SEVERITIES.index(self.severity)


_FIELDS = {"name", "type", "urlFile", "secretFile", "instances", "services", "kinds",
           "severity", "ratePerMinute"}


def load_receivers(path: str, default_rate: float = 30.0) -> list[Receiver]:
    """Receivers from the YAML file at `path`; NotifyConfigError (one line) if unusable."""
    def bad(what: str) -> NotifyConfigError:
        return NotifyConfigError(f"notification receivers file {path}: {what}",
                                 {"path": path})

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise bad(f"cannot read it: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise bad(f"not valid YAML: {str(e).splitlines()[0]}") from None
    items = (doc or {}).get("receivers") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise bad("expected 'receivers: [{name, type, urlFile, ...}]'")
    out: list[Receiver] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad(f"receiver #{i} is not a mapping")
        name = item.get("name")
        where = f"receiver {name!r}" if isinstance(name, str) and name else f"receiver #{i}"
        unknown = sorted(set(item) - _FIELDS)
        if "url" in item:
            raise bad(f"{where}: 'url' is not read from this file (a URL is a secret): "
                      "put it in a file and name it with urlFile")
        if unknown:
            raise bad(f"{where}: unknown field(s) {', '.join(unknown)} "
                      f"(known: {', '.join(sorted(_FIELDS))})")
        if not isinstance(name, str) or not name.strip():
            raise bad(f"{where}: needs a name")
        if name in {r.name for r in out}:
            raise bad(f"{where}: the name is used twice")
        kind = item.get("type")
        if kind not in RECEIVER_TYPES:
            raise bad(f"{where}: type must be one of {', '.join(RECEIVER_TYPES)}, got {kind!r}")
        url_file = item.get("urlFile")
        if not isinstance(url_file, str) or not url_file:
            raise bad(f"{where}: needs urlFile (the file holding the URL)")
        secret_file = item.get("secretFile")
        if secret_file is not None and (kind != "webhook" or not isinstance(secret_file, str)):
            raise bad(f"{where}: secretFile is a file path, for a webhook receiver")
        severity = item.get("severity", "info")
        if severity not in SEVERITIES:
            raise bad(f"{where}: severity must be one of {', '.join(SEVERITIES)}, "
                      f"got {severity!r}")
        lists = {}
        for key in ("instances", "services", "kinds"):
            value = item.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad(f"{where}: {key} must be a list of names")
            lists[key] = frozenset(value)
        if lists["kinds"] - set(KINDS):
            raise bad(f"{where}: unknown kind(s) {', '.join(sorted(lists['kinds'] - set(KINDS)))}"
                      f" (known: {', '.join(KINDS)})")
        rate = item.get("ratePerMinute", default_rate)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise bad(f"{where}: ratePerMinute must be a number > 0, got {rate!r}")
        out.append(Receiver(name, kind, Path(url_file),
                            Path(secret_file) if secret_file else None,
                            lists["instances"], lists["services"], lists["kinds"],
                            severity, float(rate)))
    return out


# -- delivery ---------------------------------------------------------------------------------


class DeliveryError(Exception):
    """A delivery failed; `transient` ones are retried (the message is kept)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _is_transient(e: BaseException) -> bool:
    return isinstance(e, DeliveryError) and e.transient


def render(receiver: Receiver, note: Notification) -> bytes:
    """The request body for this receiver's type."""
    if receiver.type == "slack":
        icon = {"error": ":red_circle:", "warning": ":warning:"}.get(note.severity,
                                                                     ":white_check_mark:")
        return json.dumps({"text": f"{icon} *{note.title}*\n{note.message}"}).encode()
    return json.dumps(note.to_dict(), separators=(",", ":")).encode()


def sign(key: bytes, body: bytes) -> str:
    """The signature header's value: how a receiver checks the body came from us."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _read_secret(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        # Transient: a Secret may be mounted (or fixed) later; the message waits for it.
        raise DeliveryError(f"cannot read the {what} file {path}: {e}", True) from None
    if not value:
        raise DeliveryError(f"the {what} file {path} is empty", True)
    return value


def post(receiver: Receiver, note: Notification, timeout: float) -> None:
    """One attempt. DeliveryError(transient) on 5xx, 408, 429, timeouts and connection
    errors; DeliveryError(permanent) on any other refusal. Never names the URL."""
    url = _read_secret(receiver.url_file, "URL")
    body = render(receiver, note)
    headers = {"Content-Type": "application/json", "User-Agent": "conductor",
               DELIVERY_HEADER: note.delivery, "X-Conductor-Kind": note.kind}
    if receiver.secret_file is not None:
        headers[SIGNATURE_HEADER] = sign(_read_secret(receiver.secret_file, "HMAC key")
                                         .encode(), body)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read(65536)
    except urllib.error.HTTPError as e:
        transient = e.code >= 500 or e.code in (408, 429)
        raise DeliveryError(f"receiver {receiver.name} answered {e.code}", transient) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise DeliveryError(f"receiver {receiver.name} unreachable: {type(reason).__name__}",
                            True) from None
    except ValueError as e:  # a URL urllib cannot use: the file is wrong, not the network
        raise DeliveryError(f"receiver {receiver.name}: unusable URL ({e.__class__.__name__})",
                            False) from None


# -- cursors --------------------------------------------------------------------------------


class Cursors:
    """Per receiver: the last event it is done with and the rules' state, in the event
    store's database. `shared`: other replicas read and move the same cursors."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.shared = db.dialect != "sqlite"
        db.migrate(STORE, MIGRATIONS)

    def load(self, receiver: str) -> tuple[int, dict[str, str]] | None:
        with self.db.read() as tx:
            row = tx.one("SELECT last_id, state FROM notify_cursors WHERE receiver = ?",
                         (receiver,))
        return (int(row[0]), json.loads(row[1])) if row else None

    def create(self, receiver: str, last_id: int,
               state: Mapping[str, str]) -> tuple[int, dict[str, str]]:
        """The receiver's cursor: this one if it has none yet, else the one it has (a
        replica starting at the same time made it)."""
        with self.db.write() as tx:
            tx.execute("INSERT INTO notify_cursors (receiver, last_id, state, updated_ms) "
                       f"VALUES (?, ?, ?, {self.db.now_ms}) ON CONFLICT (receiver) DO NOTHING",
                       (receiver, last_id, json.dumps(dict(state), sort_keys=True)))
        found = self.load(receiver)
        assert found is not None
        return found

    def save(self, receiver: str, last_id: int, state: Mapping[str, str]) -> None:
        """Move the cursor forward to `last_id` (never back)."""
        with self.db.write() as tx:
            tx.execute(
                "INSERT INTO notify_cursors (receiver, last_id, state, updated_ms) "
                f"VALUES (?, ?, ?, {self.db.now_ms}) ON CONFLICT (receiver) DO UPDATE SET "
                "last_id = excluded.last_id, state = excluded.state, "
                "updated_ms = excluded.updated_ms "
                "WHERE notify_cursors.last_id <= excluded.last_id",
                (receiver, last_id, json.dumps(dict(state), sort_keys=True)))

    def close(self) -> None:
        """Nothing of its own to release: the database is the event store's."""


# -- the notifier ---------------------------------------------------------------------------


@dataclass
class _Bucket:
    """Messages per minute: a token bucket that makes a sender wait, never drops."""

    per_minute: float
    tokens: float = 1.0
    at: float = field(default_factory=time.monotonic)

    def wait_time(self) -> float:
        now = time.monotonic()
        burst = max(1.0, self.per_minute / 6)  # ten seconds' worth at once
        self.tokens = min(burst, self.tokens + (now - self.at) * self.per_minute / 60)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * 60 / self.per_minute


class Notifier:
    """One worker thread per receiver, following the event store from its cursor."""

    def __init__(self, settings: NotificationSettings, store: EventStore,
                 receivers: Sequence[Receiver], *, instance: str,
                 is_leader: Callable[[], bool] = lambda: True) -> None:
        self.settings = settings
        self.store = store
        self.receivers = list(receivers)
        self.instance = instance
        self.is_leader = is_leader
        self.cursors = Cursors(store.db) if self.receivers else None
        self.delivered: dict[str, int] = {r.name: 0 for r in self.receivers}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_settings(cls, settings: NotificationSettings, store: EventStore, *,
                      instance: str, is_leader: Callable[[], bool] = lambda: True) -> Notifier:
        receivers = load_receivers(settings.receivers_file, settings.rate_per_minute) \
            if settings.receivers_file else []
        return cls(settings, store, receivers, instance=instance, is_leader=is_leader)

    def start(self) -> Notifier:
        for receiver in self.receivers:
            thread = threading.Thread(target=self._run, args=(receiver,), daemon=True,
                                      name=f"notify-{receiver.name}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        if self.cursors is not None:
            self.cursors.close()

    # -- one receiver -----------------------------------------------------------------------

    def _run(self, receiver: Receiver) -> None:
        while not self._stop.is_set():
            try:
                self._follow(receiver)
            except Exception:  # a bug or a closed store: log, wait, go on from the cursor
                if self._stop.is_set() or self.store.closed:
                    return
                log.exception("notifier %s failed; resuming from its cursor", receiver.name)
                self._stop.wait(self.settings.backoff_max)

    def _follow(self, receiver: Receiver) -> None:
        assert self.cursors is not None
        shared = self.cursors.shared
        saved = self.cursors.load(receiver.name)
        last, state = saved if saved is not None else \
            self.cursors.create(receiver.name, *self._seed())
        bucket = _Bucket(receiver.rate_per_minute)
        while not self._stop.is_set():
            if shared and not self.is_leader():
                # The leader moves the shared cursor: read it again once this one leads.
                self._stop.wait(1.0)
                return
            mark = self.store.last_id  # every match up to it is in a short page
            page = self.store.query(_TYPES, limit=PAGE, after_id=last, oldest_first=True)
            for event in page:
                for note in classify(state, event, self.instance):
                    if not receiver.wants(note):
                        continue
                    if not self.is_leader():
                        if shared:
                            return  # the new leader sends it: the cursor stays before it
                        continue
                    if not self._deliver(receiver, note, bucket):
                        return  # stopping: the cursor stays before this event
                last = event.id
                self.cursors.save(receiver.name, last, state)
            if len(page) < PAGE and mark > last:
                last = mark
                self.cursors.save(receiver.name, last, state)
            if len(page) < PAGE:
                self.store.wait_for_new(last, 1.0)  # short: a stop is seen soon

    def _seed(self) -> tuple[int, dict[str, str]]:
        """A new receiver starts at the newest event, its state replayed from the recent
        ones (nothing sent): it is not told of last week's failures, and the first pass
        it sees is no "new revision" when that revision was applied before."""
        last = self.store.last_id
        state: dict[str, str] = {}
        recent = self.store.query(_TYPES, limit=SEED_EVENTS, before_id=last + 1)
        for event in reversed(recent):
            classify(state, event, self.instance)
        return last, state

    def _deliver(self, receiver: Receiver, note: Notification, bucket: _Bucket) -> bool:
        """Send until the receiver takes it (True), refuses it for good (logged, True), or
        the notifier stops (False)."""
        while not self._stop.wait(bucket.wait_time()):
            if self._stop.is_set():
                return False
            try:
                self._retrying()(post, receiver, note, self.settings.timeout)
            except DeliveryError as e:
                if not e.transient:
                    log.error("notification %s (%s) to %s refused for good: %s; skipped",
                              note.delivery, note.kind, receiver.name, e)
                    return True
                log.warning("notification %s to %s not delivered yet (%s); retrying in "
                            "%.0fs", note.delivery, receiver.name, e,
                            self.settings.backoff_max)
                if self._stop.wait(self.settings.backoff_max):
                    return False
                continue
            self.delivered[receiver.name] += 1
            log.info("notification %s (%s: %s) delivered to %s", note.delivery, note.kind,
                     note.title, receiver.name)
            return True
        return False

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # a stop ends the wait (and then the retries) at once

    def _retrying(self) -> tenacity.Retrying:
        s = self.settings
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_transient),
            wait=tenacity.wait_exponential_jitter(multiplier=s.backoff_initial,
                                                  max=s.backoff_max),
            stop=tenacity.stop_after_attempt(s.attempts) | _stopped(self._stop),
            sleep=self._sleep,
            reraise=True)


def _stopped(event: threading.Event) -> tenacity.stop.stop_base:
    class _Stop(tenacity.stop.stop_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
            return event.is_set()

    return _Stop()


__all__ = ["KINDS", "RULES", "Cursors", "DeliveryError", "Notification", "Notifier",
           "NotifyConfigError", "Receiver", "Rule", "classify", "load_receivers", "post",
           "render", "sign"]
