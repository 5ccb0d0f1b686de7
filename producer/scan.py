"""Finding files in ``incoming/`` and recognising images by their content."""

from dataclasses import dataclass
from pathlib import Path

from refund_sorter.images import UnreadableImage, sha256_file, sniff


@dataclass(frozen=True)
class Found:
    path: Path
    content_hash: str
    error: str | None  # why the file is not an image, or None


def list_files(incoming_dir: Path) -> list[Path]:
    """Every regular file below ``incoming_dir``; hidden files (uploads in progress,
    ``.DS_Store``) are left alone."""
    incoming_dir = Path(incoming_dir)
    if not incoming_dir.is_dir():
        return []
    return sorted(
        p.absolute()
        for p in incoming_dir.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(incoming_dir).parts)
    )


def inspect(path: Path) -> Found:
    content_hash = sha256_file(path)
    try:
        sniff(path)
        error = None
    except UnreadableImage as exc:
        error = str(exc)
    return Found(path, content_hash, error)
