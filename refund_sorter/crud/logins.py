"""The review desk's login limit: failed logins counted per key, locks, and forgetting them."""

from datetime import datetime

from sqlalchemy import delete, or_, update
from sqlalchemy.orm import Session

from models import LoginFailures, utcnow
from refund_sorter.crud.common import upsert


def count_login_failure(session: Session, *, key: str, quiet_before: datetime) -> int:
    """Count one failed login for ``key`` (``account:NAME`` or ``address:IP``), in the
    caller's transaction, and return its failures in a row. Rows quiet since before
    ``quiet_before`` (no failure and no lock since) are forgotten first, this one included:
    its count starts again at 1."""
    session.execute(
        delete(LoginFailures).where(
            LoginFailures.last_failure_at < quiet_before,
            or_(LoginFailures.locked_until.is_(None), LoginFailures.locked_until < quiet_before),
        )
    )
    now = utcnow()
    failures = LoginFailures.__table__
    statement = upsert(session, failures).values(key=key, failures=1, last_failure_at=now)
    return session.execute(
        statement.on_conflict_do_update(
            index_elements=[failures.c.key],
            set_={"failures": failures.c.failures + 1, "last_failure_at": now},
        ).returning(failures.c.failures)
    ).scalar_one()


def lock_login(session: Session, *, key: str, until: datetime) -> None:
    """Refuse logins for ``key`` until ``until`` (the row ``count_login_failure`` made)."""
    session.execute(
        update(LoginFailures).where(LoginFailures.key == key).values(locked_until=until)
    )


def forget_login_failures(session: Session, *, key: str) -> None:
    """A successful login: ``key``'s failures no longer count."""
    session.execute(delete(LoginFailures).where(LoginFailures.key == key))
