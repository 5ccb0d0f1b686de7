"""Who may use the review desk: reviewer accounts, the key that signs session cookies, and
the per-session token every form carries (CSRF)."""

import hmac
import logging
import secrets

from refund_sorter.config import Settings
from refund_sorter.errors import UserError
from refund_sorter.passwords import DUMMY_HASH, verify_password

log = logging.getLogger(__name__)

MIN_SECRET_LENGTH = 32
# Values copied from examples rather than made up: never a key outside development.
PLACEHOLDERS = {"changethis", "change-me", "changeme", "secret", "please-change", "xxx"}


def session_secret(settings: Settings) -> str:
    """REFUND_SORTER_REVIEW_SECRET_KEY, refused when missing, short or a placeholder, except in
    development, where a missing key is replaced by a random one (sessions then end with
    the process) and a weak one only warned about."""
    given = settings.review_secret_key.get_secret_value() if settings.review_secret_key else ""
    problem = None
    if not given:
        problem = "REFUND_SORTER_REVIEW_SECRET_KEY is not set"
    elif given.lower() in PLACEHOLDERS or len(given) < MIN_SECRET_LENGTH:
        problem = (
            f"REFUND_SORTER_REVIEW_SECRET_KEY is a placeholder or shorter than "
            f"{MIN_SECRET_LENGTH} characters"
        )
    if problem is None:
        return given
    if settings.environment != "development":
        raise UserError(
            f"{problem}: it signs the review desk's login cookies; set it to a random value "
            "(openssl rand -hex 32)"
        )
    log.warning("%s; acceptable in development only", problem)
    return given or secrets.token_hex(32)


def reviewers(settings: Settings) -> dict[str, str]:
    """The reviewer accounts (name -> password hash); UserError if there are none."""
    accounts = settings.reviewer_hashes()
    if not accounts:
        raise UserError(
            "no reviewer can log in: set REFUND_SORTER_REVIEWERS=name:hash[,name:hash...] "
            "(make a hash with `refund-sorter review-server hash-password`)"
        )
    return accounts


def authenticate(accounts: dict[str, str], name: str, password: str) -> bool:
    """Whether ``password`` is ``name``'s. An unknown name costs a check all the same, so the
    time taken does not tell which names exist."""
    ok = verify_password(password, accounts.get(name, DUMMY_HASH))
    return ok and name in accounts


def csrf_token(session: dict) -> str:
    """This session's form token, made on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_valid(session: dict, submitted: str | None) -> bool:
    expected = session.get("csrf")
    if not (expected and isinstance(submitted, str) and submitted):
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())
