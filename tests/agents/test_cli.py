"""The CLI's client commands against a fake conductor on 127.0.0.1 (the agreed issue-15
shapes): tables and JSON, exit codes a script can branch on, one-line errors."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import cli
from controller.agents import commands
from tests.support.fake_conductor import FakeConductor


@pytest.fixture
def fake() -> Iterator[FakeConductor]:
    with FakeConductor(token="s3cret") as f:
        yield f


def run(fake: FakeConductor | None, *argv: str, capsys: pytest.CaptureFixture[str],
        url: str | None = None) -> tuple[int, str, str]:
    env = {"CONDUCTOR_URL": url or (fake.url if fake else ""), "CONDUCTOR_TOKEN": "s3cret"}
    out = io.StringIO()
    args = cli._parser().parse_args(list(argv))
    code = commands.run(args, env, out)
    return code, out.getvalue(), capsys.readouterr().err


def test_reads_as_tables_and_json(fake: FakeConductor,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(fake, "services", capsys=capsys)
    assert code == 0 and text.splitlines()[0].split() == ["NAME", "NAMESPACE", "DEPLOYED",
                                                          "STATUS"]
    code, text, _ = run(fake, "health", "-o", "json", capsys=capsys)
    assert code == 0 and {s["name"] for s in json.loads(text)["services"]} == {
        "frontend", "postgres", "redis"}
    code, text, _ = run(fake, "params", "get", "-o", "json", capsys=capsys)
    assert json.loads(text) == {"version": "1", "parameters": fake.state.spec}
    code, text, _ = run(fake, "events", "--type", "error", capsys=capsys)
    assert "ImagePullBackOff" in text
    # Every request carried the token from CONDUCTOR_TOKEN.
    assert all(h.get("Authorization") == "Bearer s3cret" for _, _, h in fake.state.requests)


def test_health_exit_code_follows_health(fake: FakeConductor,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    fake.state.health["redis"] = "unhealthy"
    code, text, _ = run(fake, "health", capsys=capsys)
    assert code == commands.EXIT_FAILED
    assert "default/Deployment/redis: ImagePullBackOff" in text


def test_up_wait_fails_with_the_reason(fake: FakeConductor,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    fake.state.health["redis"] = "unhealthy"
    code, _, err = run(fake, "up", "redis", "--wait", capsys=capsys)
    assert code == commands.EXIT_FAILED
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("conductor up: reconciliation_error: Deployment failed "
                          "(resource=default/Deployment/redis, error=ImagePullBackOff)")


def test_patch_sends_if_match_and_a_stale_one_is_412(fake: FakeConductor,
                                                     capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    code, text, _ = run(fake, "params", "patch", '{"services": {"redis": {"replicas": 3}}}',
                        capsys=capsys)
    assert code == 0 and "version 2" in text
    assert fake.state.requests[-1][2]["If-Match"] == '"1"'
    code, _, err = run(fake, "params", "patch", '{"global": {"replicas": 2}}',
                       "--if-match", "1", capsys=capsys)
    assert code == commands.EXIT_FAILED
    assert err.startswith("conductor params: precondition_failed: ") and "current=2" in err
    assert fake.state.spec["global"]["replicas"] == 1
    spec = tmp_path / "p.yaml"
    spec.write_text("global: {replicas: 4}\nservices: {}\n")
    code, _, _ = run(fake, "params", "set", str(spec), capsys=capsys)
    assert code == 0 and fake.state.spec == {"global": {"replicas": 4}, "services": {}}


def test_plan_prints_per_object_diffs(fake: FakeConductor,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(fake, "plan", "--patch", '{"services": {"redis": {"replicas": 5}}}',
                        capsys=capsys)
    assert code == 0
    assert "of a draft" in text and "update   default/Deployment/redis" in text
    assert "  +  replicas: 5" in text
    sent = [r for r in fake.state.requests if r[0] == "POST"]
    assert len(sent) == 1 and fake.state.version == 1  # a plan writes nothing


def test_wait_times_out_with_exit_4(fake: FakeConductor,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake.state.health["redis"] = "progressing"
    code, _, err = run(fake, "wait", "redis", "--timeout", "0.5", capsys=capsys)
    assert code == commands.EXIT_TIMEOUT and "redis: progressing" in err
    fake.state.health["redis"] = "healthy"
    assert run(fake, "wait", "--timeout", "5", capsys=capsys)[0] == 0


def test_event_stream_is_parsed(fake: FakeConductor,
                               capsys: pytest.CaptureFixture[str]) -> None:
    stream = fake.url  # the fake ends each stream; --follow reconnects with Last-Event-ID
    reasons: list[str] = []
    client = commands.Client(commands.ClientSettings(stream, "s3cret"))
    for event in client.stream_events(type="error"):
        reasons.append(event["reason"])
    assert reasons == ["ImagePullBackOff"]


def test_unreachable_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    from devcluster.running import free_port

    code, _, err = run(None, "status", url=f"http://127.0.0.1:{free_port()}", capsys=capsys)
    assert code == commands.EXIT_UNREACHABLE
    assert err.startswith("conductor status: unreachable: ") and err.count("\n") == 1


def test_version_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("conductor ")
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "complete -o default -F _conductor conductor" in script
    for word in ("health", "params/get", "--follow", "--output", "init", "mcp"):
        assert word in script, word
