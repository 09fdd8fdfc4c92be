"""Secrets never reach the terminal: env values of secret-looking keys, passwords in URLs."""

from __future__ import annotations

import pytest

from pytest_unified_launcher._redact import redact, redact_env
from pytest_unified_launcher.errors import ConfigError, ServiceStartupError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:hunter2@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("redis://:p4ss@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("DB_PASSWORD=hunter2 other=1", "DB_PASSWORD=*** other=1"),
        ("API_TOKEN: 'abc.def'", "API_TOKEN: '***'"),
        ("SECRET_KEY=xyz", "SECRET_KEY=***"),
        ("PORT=8000 HOST=localhost", "PORT=8000 HOST=localhost"),
        ("http://127.0.0.1:8000/health", "http://127.0.0.1:8000/health"),
        ("STRIPE_API_KEY=sk_live_1 apikey=2 KEY=3", "STRIPE_API_KEY=*** apikey=*** KEY=***"),
        ("KEY_ID=AKIA1 private_key: 'pem'", "KEY_ID=*** private_key: '***'"),
        ("fix: valid keys: command, http, log", "fix: valid keys: command, http, log"),
        ("MONKEY=banana KEYBOARD=us", "MONKEY=banana KEYBOARD=us"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    """Secret values are masked; everything else is left as it is."""
    assert redact(text) == expected


def test_redact_env() -> None:
    """A whole env mapping is masked by key, and URLs inside values are masked too."""
    assert redact_env({"AWS_SECRET_ACCESS_KEY": "x", "DATABASE_URL": "postgres://u:pw@h/db", "MODE": "a"}) == {
        "AWS_SECRET_ACCESS_KEY": "***", "DATABASE_URL": "postgres://u:***@h/db", "MODE": "a"}


def test_errors_mask_secrets() -> None:
    """Error messages and log tails never show a password."""
    err = ServiceStartupError("db", "exited with code 1", log_tail="connecting to postgres://u:topsecret@h/db")
    assert "topsecret" not in str(err) and "postgres://u:***@h/db" in str(err)
    cfg = ConfigError("wrong value 'x': PASSWORD=letmein is not valid", source="launcher.toml")
    assert "letmein" not in str(cfg)
