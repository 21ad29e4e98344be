"""Strict configuration (controller/config.py): unknown variables, invalid values, masking."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from controller.config import (
    CLIENT_VARIABLES,
    ApiSettings,
    Config,
    ConfigError,
    GitSettings,
    LeaderSettings,
    check_environment,
    effective,
    known_variables,
    validate,
)

REPO = Path(__file__).resolve().parents[2]


def test_a_misspelt_variable_is_refused_with_the_closest_name() -> None:
    with pytest.raises(ConfigError) as e:
        check_environment({"CONDUCTOR_LOOP_INTERVALL": "30"})
    assert str(e.value) == ("CONDUCTOR_LOOP_INTERVALL: unknown setting; did you mean "
                            "CONDUCTOR_LOOP_INTERVAL?")
    with pytest.raises(ConfigError, match="conductor config --list"):
        check_environment({"CONDUCTOR_XYZZY": "1"})


def test_variables_that_are_not_settings_pass() -> None:
    check_environment({"CONDUCTOR_TEST_KUBECONFIG": "x", "CONDUCTOR_BENCH_STATE_DIR": "y",
                       "CONDUCTOR_PEER_HEALTH": "z", "HOME": "/root",
                       "CONDUCTOR_API_AUTH": "false"})
    # The variable CONDUCTOR_GIT_TOKEN_ENV points at holds the token, not a setting.
    check_environment({"CONDUCTOR_GIT_TOKEN_ENV": "CONDUCTOR_REPO_TOKEN",
                       "CONDUCTOR_REPO_TOKEN": "s3cret"}, ignore=("CONDUCTOR_REPO_TOKEN",))


@pytest.mark.parametrize(("name", "value", "message"), [
    ("CONDUCTOR_APPLY_CONFLICTS", "bogus", "expected one of force, fail, got 'bogus'"),
    ("CONDUCTOR_SOURCE", "svn", "expected one of resource, git"),
    ("CONDUCTOR_LOOP_INTERVAL", "abc", "expected a number"),
    ("CONDUCTOR_LOOP_INTERVAL", "nan", "expected a finite number"),
    ("CONDUCTOR_API_PORT", "80.5", "expected an integer"),
    ("CONDUCTOR_API_AUTH", "maybe", "expected a boolean"),
])
def test_values_are_converted_by_their_type_or_refused(name: str, value: str,
                                                       message: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_env({name: value})
    assert str(e.value).startswith(f"{name}: ") and message in str(e.value), str(e.value)


@pytest.mark.parametrize(("change", "message"), [
    ({"api": ApiSettings(port=0)}, "CONDUCTOR_API_PORT: 0 is out of range"),
    ({"api": ApiSettings(threads=0)}, "CONDUCTOR_API_THREADS"),
    ({"api": ApiSettings(tokens_file="/nonexistent/tokens.yaml")},
     "CONDUCTOR_API_TOKENS_FILE: /nonexistent/tokens.yaml is not a readable file"),
    ({"api": ApiSettings(certfile=__file__)}, "set both"),
    ({"leader": LeaderSettings(lease_duration=5, renew_deadline=10)},
     "RETRY_PERIOD < RENEW_DEADLINE < LEASE_DURATION"),
    ({"source": "git"}, "CONDUCTOR_GIT_URL"),
    ({"manifest_root": Path("/nonexistent")}, "CONDUCTOR_MANIFEST_ROOT"),
    ({"kubeconfig": "/nonexistent/kubeconfig"}, "KUBECONFIG: /nonexistent/kubeconfig"),
])
def test_validate_names_the_setting(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate(replace(Config(), **change))  # type: ignore[arg-type]
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_the_defaults_are_valid() -> None:
    validate(Config())


def test_effective_configuration_masks_credentials() -> None:
    cfg = replace(Config(), source="git", git=GitSettings(
        url="https://deploy:hunter2@git.example/app.git", token_file="/run/token"))
    shown = effective(cfg)
    assert shown["CONDUCTOR_GIT_URL"] == "https://***@git.example/app.git"
    assert shown["CONDUCTOR_GIT_TOKEN_FILE"] == "/run/token"  # a path, not a secret
    assert "hunter2" not in "\n".join(shown.values())
    assert set(shown) == set(known_variables())


def test_the_clients_variables_do_not_stop_the_controller() -> None:
    """One shell may hold the CLI's URL and token and also start `conductor run`."""
    check_environment({"CONDUCTOR_URL": "http://127.0.0.1:8081", "CONDUCTOR_TOKEN": "t"})


def test_every_variable_the_kit_and_readme_name_is_a_setting() -> None:
    named: set[str] = set()
    for path in [REPO / "README.md", *REPO.glob("config/**/*.yaml")]:
        named |= set(re.findall(r"\bCONDUCTOR_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    unknown = {n for n in named if not n.startswith(("CONDUCTOR_TEST_", "CONDUCTOR_BENCH_",
                                                      "CONDUCTOR_PEER_"))}
    # README abbreviations such as `_RATE_BURST` are written without the prefix; the
    # client's variables are named where the CLI and MCP server are described.
    unknown -= set(known_variables()) | set(CLIENT_VARIABLES)
    assert not unknown, sorted(unknown)
