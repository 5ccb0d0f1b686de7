"""Robust image decoding shared by training, evaluation, the producer and the workers.

Torch-free on purpose: the producer uses ``sniff`` and must start without PyTorch.
"""

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Anything bigger is almost certainly not a product photo, and decoding it could exhaust memory.
Image.MAX_IMAGE_PIXELS = 100_000_000


class UnreadableImage(Exception):
    """The file is not an image we can decode; the message says why in plain words."""


class NotAnImage(UnreadableImage):
    """Content no decoder here recognises as an image (a text file, a PDF), or an image in a
    format that was not asked for: not a damaged image."""


def sha256_file(source: Path | BinaryIO, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file, given its path or an open binary handle (read to the end)."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as fh:
            return sha256_file(fh, chunk)
    digest = hashlib.sha256()
    while block := source.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff(source: Path | BinaryIO) -> str:
    """Return the image format found in the file's header, or raise UnreadableImage.

    Reads only the header, so it is cheap enough for the producer's scan. ``source`` is a
    path or a binary handle positioned at the start of the file.
    """
    try:
        if isinstance(source, str | os.PathLike):
            size = os.stat(source).st_size
        else:
            size = os.fstat(source.fileno()).st_size
        if size == 0:
            raise UnreadableImage("empty file")
        with Image.open(source) as img:
            return img.format or "unknown"
    except UnidentifiedImageError:
        raise NotAnImage("not an image (unrecognised content)") from None
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"image too large: {exc}") from None
    except OSError as exc:
        raise UnreadableImage(f"cannot read file: {exc}") from None


def open_rgb(
    source: Path | str | bytes,
    min_size: int | None = None,
    formats: tuple[str, ...] | None = None,
) -> Image.Image:
    """Decode an image file (or its bytes) to 8-bit RGB, upright (EXIF rotation applied).

    Handles grayscale, 16-bit, palette, alpha (flattened on white) and CMYK. With
    ``min_size`` JPEGs are decoded at the smallest scale that still covers it,
    which is several times faster for large photos. With ``formats`` (Pillow's names:
    ``JPEG``, ``PNG``, ...) content in any other format is ``NotAnImage``.
    """
    try:
        if isinstance(source, bytes):
            fh = io.BytesIO(source)
            empty = not source
        else:
            fh = Path(source)
            empty = fh.stat().st_size == 0
        if empty:
            raise UnreadableImage("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh, formats=formats) as img:
                if min_size and img.format == "JPEG":
                    img.draft(img.mode, (min_size, min_size))
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img))
    except UnreadableImage:
        raise
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except IsADirectoryError:
        raise UnreadableImage("a folder, not an image file") from None
    except UnidentifiedImageError:
        raise NotAnImage("not an image (unrecognised content)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow reports truncated or corrupt data as OSError, SyntaxError or ValueError.
        raise UnreadableImage(f"corrupt or truncated image: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img
