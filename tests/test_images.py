"""refund_sorter/images.py: decoding whatever customers photograph into upright 8-bit RGB."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from refund_sorter.images import UnreadableImage, open_rgb, sha256_file, sniff

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def close_to(pixel, expected, tolerance=12):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


# --- the formats a phone, a scanner or an editor produce ------------------------------------


def test_jpeg_with_exif_orientation_is_turned_upright(tmp_path):
    # Stored 40 wide x 20 tall, left half red, right half blue. Orientation 6 says "rotate
    # 90 degrees clockwise to display": upright it is 20 x 40 with red on top.
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)

    img = open_rgb(path)

    assert img.mode == "RGB"
    assert img.size == (20, 40)
    assert close_to(img.getpixel((10, 5)), RED, 40)
    assert close_to(img.getpixel((10, 34)), BLUE, 40)


def test_grayscale_becomes_grey_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (8, 8), 100).save(path)

    img = open_rgb(path)

    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (100, 100, 100)


def test_16_bit_grayscale_png_is_scaled_to_8_bit(tmp_path):
    path = tmp_path / "scan16.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"  # what the test is about

    img = open_rgb(path)

    assert img.mode == "RGB"
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (127, 127, 127), WHITE]


def test_palette_png_with_transparency_is_flattened_on_white(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, *RED] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 0)  # index 0 is transparent black
    img.putpixel((1, 0), 1)  # index 1 is opaque red
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)

    out = open_rgb(path)

    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == RED


def test_rgba_png_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    img.putpixel((1, 0), (*RED, 255))
    img.putpixel((2, 0), (*BLUE, 128))  # half transparent blue
    path = tmp_path / "cutout.png"
    img.save(path)

    out = open_rgb(path)

    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == RED
    assert close_to(out.getpixel((2, 0)), (127, 127, 255), 2)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path)  # pure red ink mix
    assert Image.open(path).mode == "CMYK"

    out = open_rgb(path)

    assert out.mode == "RGB"
    assert close_to(out.getpixel((8, 8)), RED, 20)


def test_webp_is_decoded(tmp_path):
    path = tmp_path / "shop.webp"
    Image.new("RGB", (16, 16), (20, 180, 40)).save(path, lossless=True)

    out = open_rgb(path)

    assert sniff(path) == "WEBP"
    assert out.getpixel((4, 4)) == (20, 180, 40)


def test_open_rgb_accepts_bytes(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (5, 3), BLUE).save(path)

    out = open_rgb(path.read_bytes())

    assert out.size == (5, 3)
    assert out.getpixel((2, 1)) == BLUE


def test_min_size_decodes_large_jpegs_smaller_but_not_below_it(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (400, 320), RED).save(path)

    out = open_rgb(path, min_size=40)

    assert out.size[0] < 400
    assert min(out.size) >= 40


@pytest.mark.parametrize(
    ("name", "fmt"), [("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.webp", "WEBP"), ("a.gif", "GIF")]
)
def test_sniff_names_the_format(tmp_path, make_image, name, fmt):
    assert sniff(make_image(tmp_path / name)) == fmt


def test_sniff_goes_by_content_not_by_suffix(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (4, 4)).save(path, format="PNG")

    assert sniff(path) == "PNG"


# --- what cannot be read ------------------------------------------------------------------------


def test_empty_file_is_unreadable(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")

    with pytest.raises(UnreadableImage, match="empty file"):
        open_rgb(path)
    with pytest.raises(UnreadableImage, match="empty file"):
        sniff(path)
    with pytest.raises(UnreadableImage, match="empty file"):
        open_rgb(b"")


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("return reason: too small\n")

    with pytest.raises(UnreadableImage, match="not an image"):
        open_rgb(path)
    with pytest.raises(UnreadableImage, match="not an image"):
        sniff(path)


def test_truncated_jpeg_is_reported_as_truncated(tmp_path):
    rng = np.random.default_rng(0)
    full = tmp_path / "full.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, quality=95)
    cut = tmp_path / "cut.jpg"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    with pytest.raises(UnreadableImage, match="corrupt or truncated") as info:
        open_rgb(cut)

    assert "Traceback" not in str(info.value)
    assert open_rgb(full).size == (64, 64)  # the complete file is fine
    # sniff reads only the header, which survived: the producer's cheap check passes it.
    assert sniff(cut) == "JPEG"


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(UnreadableImage, match="file not found"):
        open_rgb(tmp_path / "gone.jpg")
    with pytest.raises(UnreadableImage):
        sniff(tmp_path / "gone.jpg")


def test_a_folder_is_unreadable_and_says_so(tmp_path):
    with pytest.raises(UnreadableImage, match="a folder, not an image file"):
        open_rgb(tmp_path)


def test_every_kind_of_broken_file_is_unreadable_with_a_reason(tmp_path, make_broken_files):
    broken = make_broken_files(tmp_path)

    for path in broken.values():
        with pytest.raises(UnreadableImage) as info:
            open_rgb(path)
        assert str(info.value), f"{path.name}: the reason must not be empty"


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"refund" * 100_000)

    assert sha256_file(path, chunk=4096) == hashlib.sha256(path.read_bytes()).hexdigest()
