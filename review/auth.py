"""Who may use the review desk: reviewer accounts, the key that signs session cookies, the
per-session token every form carries (CSRF), and the limit on failed logins."""

import hmac
import logging
import math
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request

from models import LoginFailures, utcnow
from refund_sorter import crud
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


# Failed logins: an account name (known or not, so a refusal tells nobody which names exist)
# is locked after 5 failures in a row; a client address after 50, so that an office behind
# one address does not lock itself out when one person mistypes. Failures count "in a row"
# while each comes within 15 minutes of the one before or of the end of a lock; each further
# failure doubles the lock, up to an hour.
ACCOUNT_FAILURES = 5
ADDRESS_FAILURES = 50
QUIET = timedelta(minutes=15)
FIRST_LOCK_SECONDS = 60
LONGEST_LOCK_SECONDS = 3600
LONGEST_NAME = 200  # longer than any account name; a longer one is counted by its start


def client_address(request: Request, trust_proxy: bool) -> str:
    """The address a login came from: the right-most X-Forwarded-For entry (the one the
    proxy itself appended; anything left of it the client may have made up) when
    REFUND_SORTER_REVIEW_TRUST_PROXY says a proxy stands in front, else the peer's."""
    if trust_proxy:
        forwarded = ",".join(request.headers.getlist("x-forwarded-for")).split(",")
        if last := forwarded[-1].strip():
            return last
    return request.client.host if request.client else "unknown"


def _limits(name: str, address: str) -> dict[str, int]:
    return {
        f"account:{name[:LONGEST_NAME]}": ACCOUNT_FAILURES,
        f"address:{address}": ADDRESS_FAILURES,
    }


def lock_seconds(failures: int, limit: int) -> int:
    """How long a key is locked after its ``failures``-th failure in a row (0: not yet)."""
    if failures < limit:
        return 0
    return min(FIRST_LOCK_SECONDS * 2 ** min(failures - limit, 32), LONGEST_LOCK_SECONDS)


def login_wait(session: Session, name: str, address: str, now: datetime) -> int:
    """Seconds before a login as ``name`` from ``address`` is looked at again (0: now)."""
    until = session.scalar(
        select(LoginFailures.locked_until)
        .where(LoginFailures.key.in_(_limits(name, address)), LoginFailures.locked_until > now)
        .order_by(LoginFailures.locked_until.desc())
        .limit(1)
    )
    return 0 if until is None else max(1, math.ceil((crud.as_utc(until) - now).total_seconds()))


def count_failed_login(session: Session, name: str, address: str) -> None:
    """One more failed login for ``name`` and for ``address``; locks either at its limit."""
    now = utcnow()
    for key, limit in _limits(name, address).items():
        failures = crud.count_login_failure(session, key=key, quiet_before=now - QUIET)
        if seconds := lock_seconds(failures, limit):
            crud.lock_login(session, key=key, until=now + timedelta(seconds=seconds))


def forget_failed_logins(session: Session, name: str) -> None:
    """A successful login: the account starts afresh (its address does not: one account's
    password must not buy more guesses at the others)."""
    crud.forget_login_failures(session, key=f"account:{name[:LONGEST_NAME]}")
