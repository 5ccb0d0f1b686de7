"""Reviewer passwords: the one place that makes and checks a password hash.

scrypt from the standard library, with OWASP's parameters for it (N=2^15, r=8, p=3: 32 MiB
and a few tenths of a second per check), a random salt per hash. A hash reads
``scrypt.<N>.<r>.<p>.<salt>.<key>`` (hex): no character that a shell, an env file or
compose would interpret, so it can be pasted as it is into REFUND_SORTER_REVIEWERS.
"""

import hashlib
import hmac
import re
import secrets

N, R, P = 2**15, 8, 3
_HASH = re.compile(r"^scrypt\.(\d+)\.(\d+)\.(\d+)\.([0-9a-f]{32,})\.([0-9a-f]{64})$")
# Checks stay affordable: a hash asking for more memory than this is refused as malformed.
_MAX_MEMORY = 256 * 2**20


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY + 2**20, dklen=32
    )


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, N, R, P)
    return f"scrypt.{N}.{R}.{P}.{salt.hex()}.{key.hex()}"


def check_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """The parameters, salt and key of a hash; ValueError, saying why, if it is not one."""
    match = _HASH.match(encoded)
    if match is None:
        raise ValueError(
            "not a password hash (make one with `refund-sorter review-server hash-password`)"
        )
    n, r, p = (int(match[i]) for i in (1, 2, 3))
    if n < 2 or n & (n - 1) or not r or not p or 128 * n * r > _MAX_MEMORY:
        raise ValueError("a password hash with unusable scrypt parameters")
    return n, r, p, bytes.fromhex(match[4]), bytes.fromhex(match[5])


def verify_password(password: str, encoded: str) -> bool:
    n, r, p, salt, key = check_hash(encoded)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), key)


# Checked against when the name is unknown, so a wrong name takes as long as a wrong password.
DUMMY_HASH = "scrypt.32768.8.3." + "0" * 32 + "." + "0" * 64
