"""When a file that cannot be used counts as still being written (torch-free): the one rule
the producer's scan and the workers apply.

A photo station that copies a photo into ``incoming/`` over the network may still be writing
it when the sweep reads it: what was read is the start of the photo, which does not decode.
Such a file is left in ``incoming/`` untouched, with a ``deferred`` row that says why, and a
later sweep takes it once it is complete; it is never filed in ``failed/`` for being
incomplete. A file that decodes is never held back, however new it is.
"""

import time


def still_being_written(
    modified: float, settle_seconds: float, *, changed: bool = False, now: float | None = None
) -> str | None:
    """Why a file that cannot be decoded (or is no longer what the scan read) is taken for one
    still being written, or None when it is taken as it is (damaged).

    ``modified``: its modification time (seconds since the epoch) when it was read;
    ``changed``: its bytes, size or modification time differ between two looks at it (the
    scan's and the worker's, or before and after the scan's own read). A change says the
    writer is still at work; otherwise a modification within ``settle_seconds`` says it may
    be (a clock ahead of this one counts as recent).
    """
    if changed:
        return (
            "still being written (its size, time or bytes changed between two reads); "
            "left in incoming/ for a later sweep"
        )
    age = (time.time() if now is None else now) - modified
    if age < settle_seconds:
        return (
            f"still being written (modified {max(age, 0):.0f} s before it was read, less than "
            f"REFUND_SORTER_SETTLE_SECONDS = {settle_seconds:g}); left in incoming/ for a "
            "later sweep"
        )
    return None
