"""Masking passwords in URLs: the one helper for anything printed, logged or stored that
holds a broker or database URL (a bare URL, or a message that embeds one)."""

import re

# scheme://[user]:password@host — the password runs to the last "@" before the host's end
# ("/", "?", "#" or a blank), which is how urllib and kombu split a URL whose password holds
# an unescaped "@".
_PASSWORD_IN_URL = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)(?P<password>[^\s/?#]+)@"
)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***@", text)
