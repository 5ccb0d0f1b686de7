"""The stall check's part for the returns counter (torch-free), run by beat's check every
minute beside the night's: the counter's photos left queued are published again, and each
day of the counter that ended gets its CSV.

A counter photo never belongs to the running sweep, so the night's check never sees it.
Here a photo still queued ``sweep_stall_seconds`` after it was handed to the workers, while
nothing waits in the counter queue, had its message lost (a worker killed holding it, a
broker restarted empty): it is published again on the counter queue. A client that asked
for it was answered 504 with its row's id meanwhile, and reads the answer once it is there.
"""

import logging
from collections.abc import Callable
from datetime import timedelta

from models import utcnow
from refund_sorter import crud
from refund_sorter.config import Settings
from refund_sorter.db import session_factory
from refund_sorter.export import export_sweeps
from refund_sorter.messages import Dispatch

log = logging.getLogger(__name__)


def resume_stalled_counter(
    settings: Settings, dispatch: Dispatch, queue_depth: Callable[[], int]
) -> int:
    """Publish again (``dispatch``) the counter's photos queued since more than
    ``sweep_stall_seconds`` while the counter queue is empty (``queue_depth``); returns how
    many."""
    waiting = queue_depth()
    if waiting:
        return 0
    quiet_before = utcnow() - timedelta(seconds=settings.sweep_stall_seconds)
    with session_factory(settings.database_url).begin() as session:
        items = crud.claim_stalled_counter_photos(session, quiet_before=quiet_before)
    if items:
        log.warning(
            "%d counter photo(s) still queued after %.0f s with the counter queue empty: "
            "publishing them again",
            len(items),
            settings.sweep_stall_seconds,
        )
        dispatch(items)
    return len(items)


def close_ended_counter_days(settings: Settings) -> list[int]:
    """Close each counter day that ended with nothing left queued (or ended more than
    ``sweep_stale_hours`` ago) and write its CSV, ``counter-<date>-<run>.csv`` beside the
    nights'. Returns the days closed."""
    sessions = session_factory(settings.database_url)
    with sessions.begin() as session:
        closed = crud.close_counter_days(
            session, now=utcnow(), stale_hours=settings.sweep_stale_hours
        )
    export_sweeps(sessions, closed, settings.export_dir)
    return closed
