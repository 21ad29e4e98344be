"""What an engine tells the world during a pass: typed events on the engine's own sink.

Each event names its pass (instance, namespace, operation, trigger, services, and a number
unique within the engine), so whoever records it (runtime/recording.py: the event store and
the Kubernetes Events on *that* instance's DeploymentParameters object) needs no state of
its own: passes may overlap (operations run beside the loop, several instances at once),
and nothing is recovered from message text. Events are plain data; the sink decides how
they are stored and shown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.errors import ConductorError
from controller.reconcile.applying import ObjectResult

Operation = Literal["reconcile", "up", "update", "down", "plan"]
NoticeType = Literal["info", "success", "warning", "error"]


@dataclass(frozen=True)
class Pass:
    """Which pass an event belongs to."""

    instance: str
    namespace: str
    operation: Operation
    trigger: str
    services: tuple[str, ...] = ()  # named by the operation; () is every service
    number: int = 0  # the engine's count of passes: tells overlapping passes apart


@dataclass(frozen=True)
class PassStarted:
    """The parameters are read: `revision` is what this pass renders."""

    pass_: Pass
    revision: str


@dataclass(frozen=True)
class ObjectDone:
    """One object's result (applied, unchanged, deleted, kept or failed)."""

    pass_: Pass
    result: ObjectResult


@dataclass(frozen=True)
class PassFinished:
    """The pass is over: its counts, or the error that stopped it."""

    pass_: Pass
    revision: str
    duration: float
    counts: Mapping[str, int]
    error: ConductorError | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or bool(self.counts.get("failed"))


@dataclass(frozen=True)
class Notice:
    """Something worth telling during a pass besides results (the parameters object was
    deleted, its CRD reinstalled)."""

    pass_: Pass
    type: NoticeType
    reason: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


PassEvent = PassStarted | ObjectDone | PassFinished | Notice
# An engine's sink: called on the pass's thread (ObjectDone also on apply workers); it must
# not raise (the engine logs it if it does) and should not block for long.
PassSink = Callable[[PassEvent], None]


def ignore(_event: PassEvent) -> None:
    """The sink of an engine nobody listens to (a library use, a test)."""


__all__ = ["Notice", "ObjectDone", "Operation", "Pass", "PassEvent", "PassFinished",
           "PassSink", "PassStarted", "ignore"]
