"""Where files go once their row is committed (``processed/`` or ``failed/``), and moving
them there.

The relative path under ``incoming/`` is kept, so operators find a file where they expect
it (or, with REFUND_SORTER_FILE_BY_CATEGORY, a classified photo goes to
``processed/<main>/<sub>/``); a name already taken gets the first characters of the content
hash appended. A photo of the returns counter (its own folder, ``counter/``, beside
``incoming/``) goes to ``processed/counter/`` and ``failed/counter/`` under its name.
"""

import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from refund_sorter.config import Settings

log = logging.getLogger(__name__)


def inside(path: Path | str, folder: Path) -> Path | None:
    """``path`` resolved (symlinks followed, ``..`` gone) if it lies below ``folder``, else
    None. A path that cannot be resolved (a symlink loop, a NUL byte) lies nowhere."""
    try:
        root = Path(folder).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return _below(path, root)


def _below(path: Path | str, root: Path) -> Path | None:
    """``inside``, for a ``root`` resolved already."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return resolved if resolved != root and resolved.is_relative_to(root) else None


def destination(path: Path, incoming_dir: Path, target_dir: Path, content_hash: str) -> Path:
    """Where ``path`` goes under ``target_dir``: its relative path under ``incoming_dir`` (its
    bare name if it lies elsewhere). Computed on resolved paths, so the result has no ``..``
    and never leaves ``target_dir``."""
    return _destination(
        Path(path).resolve(), Path(incoming_dir).resolve(), Path(target_dir).resolve(), content_hash
    )


def _destination(path: Path, incoming_dir: Path, target_dir: Path, content_hash: str) -> Path:
    """``destination``, for paths resolved already."""
    below = path != incoming_dir and path.is_relative_to(incoming_dir)
    dest = target_dir / (path.relative_to(incoming_dir) if below else Path(path.name))
    if dest.exists():
        dest = dest.with_name(f"{dest.stem}-{content_hash[:8]}{dest.suffix}")
    return dest


@dataclass
class Folders:
    """``incoming/``, ``processed/`` and ``failed/`` resolved once, for a batch of photos (or
    a scan's files): each photo is checked and given its destination against them, so only
    its own path is resolved, once, rather than both sides of every check again (which cost
    a worker more than its database reads). The paths its methods take are resolved already
    (``inside_incoming`` gives them)."""

    incoming: Path
    processed: Path
    failed: Path
    file_by_category: bool
    counter: Path | None = None  # the returns counter's uploads, beside incoming/
    # processed/<main>/<sub>/, resolved, by (main, sub): few per batch
    _categories: dict[tuple[str, str], Path] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Settings) -> "Folders":
        return cls(
            Path(settings.incoming_dir).resolve(),
            Path(settings.processed_dir).resolve(),
            Path(settings.failed_dir).resolve(),
            settings.file_by_category,
            Path(settings.counter_dir).resolve(),
        )

    def inside_incoming(self, path: Path | str) -> Path | None:
        """``path`` resolved if it lies below ``incoming/``, else None (as ``inside``)."""
        return _below(path, self.incoming)

    def inside_sources(self, path: Path | str) -> Path | None:
        """``path`` resolved if it lies below ``incoming/`` or the counter's folder: where
        the photos a worker may act on lie. None elsewhere (as ``inside``)."""
        found = _below(path, self.incoming)
        if found is None and self.counter is not None:
            found = _below(path, self.counter)
        return found

    def _source_root(self, path: Path) -> tuple[Path, str | None]:
        """The folder ``path`` (resolved) came from, and the folder its files go to under
        processed/ and failed/ (None: the same relative path)."""
        if self.counter is not None and path != self.counter and path.is_relative_to(self.counter):
            return self.counter, "counter"
        return self.incoming, None

    def failed_destination(self, path: Path, content_hash: str) -> Path:
        """Where a file that is not a usable image goes: its path under incoming/ kept in
        failed/ (a counter photo: failed/counter/)."""
        root, below = self._source_root(path)
        target = self.failed / below if below else self.failed
        return _destination(path, root, target, content_hash)

    def processed_destination(self, path: Path, content_hash: str, main: str, sub: str) -> Path:
        """Where a photo classified as ``main``/``sub`` goes: ``processed/<main>/<sub>/<name>``
        with REFUND_SORTER_FILE_BY_CATEGORY, else its path under incoming/ kept in
        processed/ (a counter photo: processed/counter/)."""
        if not self.file_by_category:
            root, below = self._source_root(path)
            target = self.processed / below if below else self.processed
            return _destination(path, root, target, content_hash)
        folder = self._categories.get((main, sub))
        if folder is None:
            folder = self._categories[main, sub] = (self.processed / main / sub).resolve()
        return _destination(path, path.parent, folder, content_hash)


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
