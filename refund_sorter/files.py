"""Where files go once their row is committed: ``processed/`` or ``failed/``.

The relative path under ``incoming/`` is kept, so operators find a file where they expect
it; a name already taken gets the first characters of the content hash appended.
"""

import shutil
from pathlib import Path


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
