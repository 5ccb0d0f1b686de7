"""The returns counter's API tokens: the one place that makes a token and hashes one.

A token is 32 random bytes (256 bits, URL-safe base64) behind the prefix ``rs_``, so that a
leaked one is recognisable in a log or a repository scan. The database keeps its SHA-256,
never the token. Unlike a reviewer's password (``refund_sorter.passwords``, scrypt), a token
is not something a person chose: no dictionary guesses it, so a slow hash would protect
nothing and cost every request a few tenths of a second. The hash is looked up by its
index, so a wrong token takes as long as a right one to check.
"""

import hashlib
import re
import secrets

PREFIX = "rs_"
_TOKEN = re.compile(r"^rs_[A-Za-z0-9_-]{43}$")
# A token's name: it is recorded on every request the token sends, and printed in lists.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def new_token() -> str:
    """A new token, to be shown once to whoever creates it."""
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str | None:
    """The SHA-256 (hex) the database keeps for ``token``; None for what cannot be one of
    ours (no lookup needed)."""
    if not _TOKEN.match(token):
        return None
    return hashlib.sha256(token.encode()).hexdigest()
