"""Passwords in broker and database URLs are masked wherever a URL is shown or stored."""

import pytest

from refund_sorter.redact import redact


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        (
            "rediss://:s3cret@redis.example:6380/0?ssl_cert_reqs=required",
            "rediss://:***@redis.example:6380/0?ssl_cert_reqs=required",
        ),
        (
            "postgresql+psycopg://refund:s3cret@db:5432/refund_sorter",
            "postgresql+psycopg://refund:***@db:5432/refund_sorter",
        ),
        # An unescaped "@" or ":" in the password: urllib and kombu split at the last "@".
        ("redis://user:s3:cr@t@redis/0", "redis://user:***@redis/0"),
        (
            "cannot reach the broker at redis://:s3cret@redis/0: Error 111; "
            "database postgres://u:s3cret@db/x",
            "cannot reach the broker at redis://:***@redis/0: Error 111; "
            "database postgres://u:***@db/x",
        ),
    ],
)
def test_the_password_of_every_url_is_masked(text, masked):
    assert redact(text) == masked
    assert "s3" not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "redis://127.0.0.1:6379/0",
        "redis://user@redis/0",
        "sqlite:///var/refund-sorter.db",
        "see https://example.com/a:b@c for details",  # "a:b@c" is a path, not a password
        "no url at all: user:password@host",
    ],
)
def test_text_without_a_password_in_a_url_is_unchanged(text):
    assert redact(text) == text
