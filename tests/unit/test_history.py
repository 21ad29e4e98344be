"""Parameter history (controller/adapters/store/history.py): a recreated object's
revisions do not collide."""

from __future__ import annotations

from pathlib import Path

from controller.adapters.store.history import History


def test_a_recreated_object_keeps_both_histories(tmp_path: Path) -> None:
    history = History(tmp_path / "h.db")
    old = {"global": {"password": "custom"}}
    new = {"global": {"password": "shipped-default"}}
    assert history.record("default", "generation/1", "resource", old, origin="uid-old-1234")
    history.mark_applied("default", "generation/1")
    # The object is deleted and created anew: its generations start again at 1.
    assert history.record("default", "generation/1", "resource", new, origin="uid-new-5678")
    listed = {e["revision"]: e for e in history.list("default")}
    assert set(listed) == {"generation/1", "generation/1@uid-old-"}
    assert listed["generation/1"]["parameters"] == new
    assert listed["generation/1"]["applied"] is False
    assert listed["generation/1@uid-old-"]["parameters"] == old
    assert listed["generation/1@uid-old-"]["applied"] is True
    # A rollback names either one; the same object recording again changes nothing.
    assert history.get("default", "generation/1@uid-old-") == old
    assert not history.record("default", "generation/1", "resource", new, origin="uid-new-5678")
    assert len(history.list("default")) == 2
    # Git revisions (no origin) are recorded once, as before.
    assert history.record("default", "abc123", "git", old)
    assert not history.record("default", "abc123", "git", new)
    history.close()
