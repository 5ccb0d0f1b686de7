"""Filing a commit's photos: each file moved where its committed row says, the rows of the
files that did not move corrected, and each night this completes finished with its CSV.

The one path from committed rows to filed photos, for the producer's scan, the workers'
batches and the stall check settling a night that a stopped process left unfiled. A night
finishes only here, after its last files moved, so its CSV and the files on disk agree
whichever process files last.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from refund_sorter import crud
from refund_sorter.db import statement_by_statement
from refund_sorter.export import export_sweeps
from refund_sorter.files import move_files


@dataclass(frozen=True)
class Move:
    """A file to move to ``dest``; ``row``: the (sweep, original path) of the committed row
    that names ``dest``, corrected if the move fails (None: no row names it)."""

    src: Path
    dest: Path
    row: tuple[int, str] | None


def file_committed(
    sessions: sessionmaker[Session],
    moves: Sequence[Move],
    filed: Mapping[int, int],
    export_dir: Path,
) -> list[int]:
    """Move the files of a commit, then in one transaction correct the rows of those that
    stayed and count ``filed[sweep]`` photos of each sweep done (``crud.record_filed``); write
    the CSV of each sweep that finished. Returns the sweeps finished."""
    outcomes = move_files([(m.src, m.dest) for m in moves])
    unmoved = [
        crud.Unmoved(*m.row, str(m.dest), why)
        for m, why in zip(moves, outcomes, strict=True)
        if why is not None and m.row is not None
    ]
    if not unmoved and not filed:
        return []
    if not unmoved and len(filed) == 1:
        # What nearly every batch files: one night's count, every move done. That is one
        # statement, atomic on its own, so it commits on its own: no BEGIN and no COMMIT to
        # wait for, and the night's row, which every worker's batches update, is locked no
        # longer than the statement.
        with statement_by_statement(sessions) as session:
            finished = crud.record_filed(session, filed=dict(filed))
    else:
        with sessions.begin() as session:
            finished = crud.record_filed(session, filed=dict(filed), unmoved=unmoved)
    export_sweeps(sessions, finished, export_dir)
    return finished
