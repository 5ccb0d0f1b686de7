"""Writing a file whole or not at all (``atomic_write``): the one way this project writes a
file that others read (a night's CSV, a model file, a fold's result, a training copy).

The data goes to a hidden temporary file in the destination's folder, which then replaces
the destination in one rename: a reader sees the old file or the new one, never half of
one, and a failed write leaves neither a half file nor the temporary one behind.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(
    path: Path | str, mode: str = "w", *, fsync: bool = False, **kwargs
) -> Iterator[IO]:
    """Open a temporary file beside ``path`` (``open``'s ``mode``, ``"w"`` or ``"wb"``, and
    keyword arguments), yield it, and on success put it in ``path``'s place; ``fsync``
    first flushes it to the disk, for a file that must survive a power cut once in place.
    The temporary file's ``name`` is its path, for a caller that checks what it wrote
    before it takes effect; it is created as ``open`` creates files (the umask applies)."""
    path = Path(path)
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a whole file: mode 'w' or 'wb', not {mode!r}")
    while True:
        # Hidden, so a folder walk (the training data's, an operator's) skips it meanwhile.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fh = open(tmp, mode.replace("w", "x"), **kwargs)  # noqa: SIM115 (closed below)
            break
        except FileExistsError:
            continue
    try:
        with fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
