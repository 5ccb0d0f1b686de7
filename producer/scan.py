"""Finding files in ``incoming/`` and recognising images by their content.

One file never stops the scan. Each entry below ``incoming/`` ends up as one of:

- ``Found`` with no error: an image, hashed, to classify (or to file as already classified);
- ``Found`` with an error: a file that is not an image as it is now. If it is still being
  written (``refund_sorter.arrival``, from ``modified`` and ``changed``), the sweep leaves it
  for later; otherwise it is recorded as failed and goes to ``failed/``. Or its bytes cannot
  be read at all (permission denied, I/O error): such a file is recorded as failed but never
  moved (``readable`` is False), since what cannot be read cannot be copied across file
  systems either, and an uploader may still be finishing it; once the service user can read
  it, the next sweep classifies it;
- ``LeftAlone``: nothing to record, only a reason to log. Symbolic links are never followed
  (one could point anywhere outside ``incoming/``), nor are pipes, sockets and devices
  read; a folder that cannot be listed is skipped whole; a file that vanished, or became a
  folder or a link, between listing and reading is not there to record.
"""

import hashlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from refund_sorter.images import UnreadableImage, sha256_file, sniff

log = logging.getLogger(__name__)

# A file that cannot be read has no content hash; its row holds this prefix and a
# fingerprint of its path and file identity instead (the column is 64 characters wide).
UNREADABLE_PREFIX = "unreadable:"


@dataclass(frozen=True)
class Found:
    path: Path
    content_hash: str  # for an unreadable file: UNREADABLE_PREFIX + fingerprint
    error: str | None  # why the file cannot be classified, or None
    readable: bool = True  # False: its bytes could not be read; it stays where it is
    modified: float = 0.0  # its modification time once read (seconds since the epoch)
    changed: bool = False  # its size or modification time changed while it was read


@dataclass(frozen=True)
class LeftAlone:
    path: Path
    reason: str
    transient: bool  # it changed while the sweep looked (vanished, replaced): nothing to fix


@dataclass
class Scan:
    found: list[Found] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)


SYMLINK = "a symbolic link (never followed)"
SPECIAL = "a pipe, socket or device (not a regular file)"
VANISHED = "vanished after it was listed"


def scan(incoming_dir: Path, progress: bool = False) -> Scan:
    """List ``incoming/`` and inspect every file in it; errors stay with their file."""
    files, left_alone = list_files(incoming_dir)
    result = Scan(left_alone=left_alone)
    for path in tqdm(files, desc="scanning", unit="file", disable=not progress, leave=False):
        outcome = inspect(path)
        if isinstance(outcome, Found):
            result.found.append(outcome)
        else:
            result.left_alone.append(outcome)
    log_left_alone(result.left_alone)
    return result


def list_files(incoming_dir: Path) -> tuple[list[Path], list[LeftAlone]]:
    """Every regular file below ``incoming_dir``, and the entries the scan leaves alone.

    Hidden files and folders (uploads in progress, ``.DS_Store``) are skipped without a word.
    ``incoming_dir`` itself may be a symbolic link (to a mount, say); nothing below it is
    followed.
    """
    # abspath, not Path.absolute: it also folds "..", so no stored path ever holds one.
    incoming_dir = Path(os.path.abspath(incoming_dir))
    if not incoming_dir.is_dir():
        return [], []
    files: list[Path] = []
    left_alone: list[LeftAlone] = []
    folders = [incoming_dir]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    path = folder / entry.name
                    # DirEntry answers from the directory listing (no stat, no following).
                    if entry.is_symlink():
                        left_alone.append(LeftAlone(path, SYMLINK, transient=False))
                    elif entry.is_dir(follow_symlinks=False):
                        folders.append(path)
                    elif entry.is_file(follow_symlinks=False):
                        files.append(path)
                    elif os.path.lexists(path):
                        left_alone.append(LeftAlone(path, SPECIAL, transient=False))
        except FileNotFoundError:  # a folder moved away while the scan walked in
            left_alone.append(LeftAlone(folder, "folder vanished while it was listed", True))
        except OSError as exc:
            reason = f"folder cannot be listed: {exc.strerror or exc}"
            left_alone.append(LeftAlone(folder, reason, transient=False))
    return sorted(files), sorted(left_alone, key=lambda x: x.path)


def inspect(path: Path) -> Found | LeftAlone:
    """Hash the file and sniff its header through one handle, so both describe the same bytes.

    The file is opened without following a link and without blocking (a pipe swapped in
    after listing would otherwise hang the night), and only read if it is still a regular
    file.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return LeftAlone(path, VANISHED, transient=True)
    except OSError as exc:  # its folder can be listed but not entered
        return _unreadable(path, None, exc)
    if (kind := _not_a_file(before.st_mode)) is not None:
        return LeftAlone(path, f"became {kind} after it was listed", transient=True)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return LeftAlone(path, VANISHED, transient=True)
    except OSError as exc:
        if os.path.islink(path):  # ELOOP: replaced by a link between lstat and open
            return LeftAlone(path, f"became {SYMLINK} after it was listed", transient=True)
        return _unreadable(path, before, exc)
    with os.fdopen(fd, "rb") as fh:
        opened = os.fstat(fh.fileno())
        if (kind := _not_a_file(opened.st_mode)) is not None:
            return LeftAlone(path, f"became {kind} after it was listed", transient=True)
        try:
            content_hash = sha256_file(fh)
        except OSError as exc:
            return _unreadable(path, opened, exc)
        fh.seek(0)
        try:
            sniff(fh)
            error = None
        except UnreadableImage as exc:
            error = str(exc)
        read = os.fstat(fh.fileno())
    changed = (opened.st_size, opened.st_mtime_ns) != (read.st_size, read.st_mtime_ns)
    return Found(path, content_hash, error, modified=read.st_mtime, changed=changed)


def _not_a_file(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISDIR(mode):
        return "a folder"
    return SPECIAL


def _unreadable(path: Path, st: os.stat_result | None, exc: OSError) -> Found:
    """A file that is there but whose bytes cannot be read.

    Its fingerprint (path, device, inode, size, modification time) stands in for the
    content hash, so a later sweep knows it already recorded this very file, and a new
    upload under the same name is recorded anew.
    """
    identity = [str(path)]
    if st is not None:
        identity += [str(st.st_dev), str(st.st_ino), str(st.st_size), str(st.st_mtime_ns)]
    digest = hashlib.sha256("\0".join(identity).encode()).hexdigest()
    fingerprint = UNREADABLE_PREFIX + digest[: 64 - len(UNREADABLE_PREFIX)]
    reason = (exc.strerror or str(exc)).lower()
    error = (
        f"cannot read file: {reason}; left where it is, "
        "and classified by the first sweep that can read it"
    )
    return Found(path, fingerprint, error, readable=False)


def log_left_alone(entries: Iterable[LeftAlone], examples: int = 5) -> None:
    """One line per reason, however many entries share it: a race over thousands of files
    or a folder full of links must not flood the log. What an operator should fix (links,
    special files, folders that cannot be listed) is a warning; what changed while the
    sweep looked is information."""
    by_reason: dict[tuple[str, bool], list[Path]] = {}
    for entry in entries:
        by_reason.setdefault((entry.reason, entry.transient), []).append(entry.path)
    for (reason, transient), paths in by_reason.items():
        shown = ", ".join(str(p) for p in paths[:examples])
        more = f" and {len(paths) - examples} more" if len(paths) > examples else ""
        log.log(
            logging.INFO if transient else logging.WARNING,
            "left alone in incoming/, %s: %d (%s%s)",
            reason,
            len(paths),
            shown,
            more,
        )
