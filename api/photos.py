"""A photo sent to the returns counter: its body read within the size limit (a raw body or
one multipart file), checked as the workers will decode it, and stored by its content in the
counter's folder. Nothing here is stored before the photo passed every check, and no name a
client sends ever reaches the disk: the file is ``<sha256><suffix>``.
"""

import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request

from refund_sorter.atomic import atomic_write
from refund_sorter.images import NotAnImage, UnreadableImage, open_rgb, sha256_bytes

# The formats the counter takes, by Pillow's names, and the suffix each is stored under.
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
# The side a JPEG is decoded at to check it: a reduced scale still reads every byte of the
# compressed data, so a truncated or corrupt photo fails here as it would on a worker, for
# a fraction of a full decode's time.
CHECK_SIDE = 64
# What a multipart body may hold around its file (boundaries, part headers, small fields).
MULTIPART_ALLOWANCE = 64 * 1024


class PhotoRefused(Exception):
    """A photo the counter does not take: the HTTP status and the plain reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Photo:
    data: bytes
    content_hash: str
    suffix: str

    @property
    def file_name(self) -> str:
        return f"{self.content_hash}{self.suffix}"


async def read_photo(request: Request, max_bytes: int) -> bytes:
    """The photo's bytes: the raw body, or the one file of a ``multipart/form-data`` body.
    PhotoRefused(413) as soon as more than ``max_bytes`` arrive (a declared length is
    checked before anything is read; a chunked body is counted as it comes)."""
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    limit = max_bytes + (MULTIPART_ALLOWANCE if multipart else 0)
    too_large = PhotoRefused(413, f"the photo is larger than {max_bytes:,} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise PhotoRefused(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    if not multipart:
        return body
    data = await _form_file(request, body)
    if len(data) > max_bytes:
        raise too_large
    return data


async def _form_file(request: Request, body: bytes) -> bytes:
    """The one file of a multipart body already read whole (``body``)."""

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    except Exception as exc:  # Starlette's parser: malformed, or too many parts
        detail = getattr(exc, "detail", None) or str(exc)
        raise PhotoRefused(400, f"cannot read the multipart body: {detail}") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if len(files) != 1:
            raise PhotoRefused(400, "a multipart body must carry exactly one file, the photo")
        return await files[0].read()
    finally:
        await form.close()


def check_photo(data: bytes) -> Photo:
    """The photo, once it decoded as a worker will decode it; PhotoRefused(415) for what is
    no image or in another format, PhotoRefused(422) for one that does not decode (empty,
    truncated, corrupt, more pixels than the decoders take)."""
    if not data:
        raise PhotoRefused(422, "empty body: send the photo's bytes")
    accepted = tuple(FORMATS)
    try:
        open_rgb(data, min_size=CHECK_SIDE, formats=accepted)
        with Image.open(io.BytesIO(data), formats=accepted) as img:
            suffix = FORMATS[img.format]
    except NotAnImage as exc:
        raise PhotoRefused(415, f"{exc}: send a JPEG, PNG or WebP photo") from None
    except UnreadableImage as exc:
        raise PhotoRefused(422, str(exc)) from None
    return Photo(data, sha256_bytes(data), suffix)


def store_photo(photo: Photo, folder: Path) -> tuple[Path, bool]:
    """The photo's file in ``folder`` (absolute, as the rows hold paths), written whole or
    not at all unless it is there already; and whether this call wrote it."""
    folder = Path(os.path.abspath(folder))
    path = folder / photo.file_name
    if path.is_file():
        return path, False
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        fh.write(photo.data)
    return path, True
