"""HTTP basic auth against a ``user:password[,user:password...]`` setting: the one check the
metrics endpoint (``monitoring.server``) and the returns counter's ``/metrics`` (``api``)
make."""

import base64
import binascii
import hmac

from pydantic import SecretStr


def allowed_pairs(credentials: SecretStr | None) -> list[bytes]:
    """The ``user:password`` pairs a setting allows; none (no password asked) when unset
    or empty."""
    if credentials is None or not credentials.get_secret_value():
        return []
    return [pair.encode() for pair in credentials.get_secret_value().split(",")]


def authorized(header: str, allowed: list[bytes]) -> bool:
    """Whether an ``Authorization`` header carries one of the ``allowed`` pairs."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    # Every pair compared, each in constant time: the answer's timing says nothing about
    # how much of a password was right, nor which user it was.
    return any([hmac.compare_digest(given, pair) for pair in allowed])
