"""One list of secret keys: events and parameters mask exactly the same keys."""

from __future__ import annotations

import pytest

from controller.model import parameters
from controller.model.redaction import REDACTED, is_secret_key, redact

SECRET = ["password", "dbPassword", "passphrase", "pwd", "token", "apiToken", "secret",
          "clientSecret", "credentials", "authorization", "auth", "cookie", "apiKey",
          "api_key", "accessKey", "privateKey", "private-key", "clientKey", "tls.key",
          "key", "cert.pem", "kubeconfig", ".dockerconfigjson", ".dockercfg"]
# Names of things, not the things: an agent needs them to fix a reference.
NOT_SECRET = ["secretName", "tokenFile", "passwordRef", "tokenEnv", "imagePullSecrets",
              "secretKeyRefs", "keyPath", "tokenType", "replicas", "image", "monkey",
              "keys", "authors"]


@pytest.mark.parametrize("key", SECRET + NOT_SECRET)
def test_events_and_parameters_agree_on_every_key(key: str) -> None:
    expected = key in SECRET
    assert is_secret_key(key) is expected
    event = redact({key: "v4lue"})[key]
    params = parameters.redact({key: "v4lue"})[key]
    assert (event == REDACTED, params == REDACTED) == (expected, expected), (event, params)
