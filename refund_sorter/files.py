"""Where files go once their row is committed (``processed/`` or ``failed/``), and the one
step that follows every commit: move the files, then write the CSV of each finished sweep.

The relative path under ``incoming/`` is kept, so operators find a file where they expect
it; a name already taken gets the first characters of the content hash appended.
"""

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from refund_sorter.export import export_sweep

log = logging.getLogger(__name__)


def destination(path: Path, incoming_dir: Path, target_dir: Path, content_hash: str) -> Path:
    path, incoming_dir = Path(path).absolute(), Path(incoming_dir).absolute()
    try:
        relative = path.relative_to(incoming_dir)
    except ValueError:
        relative = Path(path.name)
    dest = Path(target_dir).absolute() / relative
    if dest.exists():
        dest = dest.with_name(f"{dest.stem}-{content_hash[:8]}{dest.suffix}")
    return dest


def move(path: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, dest)


def settle(
    moves: Iterable[tuple[Path, Path]],
    finished_sweeps: Iterable[int],
    *,
    sessions: sessionmaker[Session],
    export_dir: Path,
) -> None:
    """After a commit: move each file where its row says, then export each finished sweep.

    A move that fails is logged, not raised: the row is committed, and the next sweep files
    the file again.
    """
    for src, dest in moves:
        try:
            move(src, dest)
        except OSError as exc:
            log.error("could not move %s to %s: %s", src, dest, exc)
    with sessions() as session:
        for sweep_id in finished_sweeps:
            log.info(
                "sweep %s finished; CSV %s", sweep_id, export_sweep(session, sweep_id, export_dir)
            )
