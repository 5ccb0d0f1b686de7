"""Where files go once their row is committed (``processed/`` or ``failed/``), and moving
them there.

The relative path under ``incoming/`` is kept, so operators find a file where they expect
it (or, with REFUND_SORTER_FILE_BY_CATEGORY, a classified photo goes to
``processed/<main>/<sub>/``); a name already taken gets the first characters of the content
hash appended.
"""

import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from refund_sorter.config import Settings

log = logging.getLogger(__name__)


def inside(path: Path | str, folder: Path) -> Path | None:
    """``path`` resolved (symlinks followed, ``..`` gone) if it lies below ``folder``, else
    None. A path that cannot be resolved (a symlink loop, a NUL byte) lies nowhere."""
    try:
        resolved, root = Path(path).resolve(), Path(folder).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return resolved if resolved != root and resolved.is_relative_to(root) else None


def destination(path: Path, incoming_dir: Path, target_dir: Path, content_hash: str) -> Path:
    """Where ``path`` goes under ``target_dir``: its relative path under ``incoming_dir`` (its
    bare name if it lies elsewhere). Computed on resolved paths, so the result has no ``..``
    and never leaves ``target_dir``."""
    path, incoming_dir = Path(path).resolve(), Path(incoming_dir).resolve()
    relative = path.relative_to(incoming_dir) if inside(path, incoming_dir) else Path(path.name)
    dest = Path(target_dir).resolve() / relative
    if dest.exists():
        dest = dest.with_name(f"{dest.stem}-{content_hash[:8]}{dest.suffix}")
    return dest


def processed_destination(
    path: Path, content_hash: str, settings: Settings, main: str, sub: str
) -> Path:
    """Where a photo classified as ``main``/``sub`` goes: ``processed/<main>/<sub>/<name>``
    with REFUND_SORTER_FILE_BY_CATEGORY, else its path under incoming/ kept in processed/."""
    if settings.file_by_category:
        folder = Path(settings.processed_dir) / main / sub
        return destination(path, Path(path).parent, folder, content_hash)
    return destination(path, settings.incoming_dir, settings.processed_dir, content_hash)


def move(path: Path, dest: Path) -> None:
    """Move one file, and only a file, so that it ends up in exactly one place.

    What was checked as a regular file may have become a folder (whose photos nobody has
    looked at) or a link since: neither is moved. A rename refused (say, the folder is not
    writable) is not retried as a copy, which would leave the file in both places; a copy
    is only for another file system, and is removed if the original cannot be.
    """
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise OSError(f"{path} is no longer a regular file")
    if os.path.lexists(dest):  # taken since its name was chosen: never overwrite
        raise FileExistsError(f"{dest} already exists")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the folder should be: say so, not "file exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), dest.parent) from None
    try:
        os.rename(path, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(path, dest)
        try:
            os.unlink(path)
        except OSError:
            dest.unlink(missing_ok=True)
            raise


def move_files(moves: Iterable[tuple[Path, Path]]) -> list[str | None]:
    """After a commit: move each file where its row says; for each move, None once done, else
    why the file is still where it was.

    A move that fails is logged, not raised: the row is committed, and one file must not stop
    the others. The caller corrects the rows of the files that stayed (``crud.record_unmoved``).
    A file found gone from ``src`` and at ``dest`` counts as moved: the stall check settling a
    night moved it while this process was slow (``refund_sorter.filing``).
    """
    outcomes: list[str | None] = []
    for src, dest in moves:
        try:
            move(src, dest)
            outcomes.append(None)
        except OSError as exc:
            if not os.path.lexists(src) and os.path.lexists(dest):
                log.info("%s was already moved to %s", src, dest)
                outcomes.append(None)
                continue
            log.error("could not move %s to %s: %s", src, dest, exc)
            why = exc.strerror.lower() if exc.strerror else str(exc)
            outcomes.append(f"could not move it to {dest}: {why}")
    return outcomes
