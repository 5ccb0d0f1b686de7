"""``refund-sorter export-training-set``: the reviewed photos, under their latest answer, in
the <main>/<sub>/ layout ``train`` reads; run again, nothing is copied twice; an answer
changed since moves the copy; a photo whose file is gone is reported, not fatal."""

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from desk_support import decide, logged_in, prediction
from sweep_support import files_under

from cli import main
from refund_sorter.taxonomy import read_layout

pytestmark = [pytest.mark.services, pytest.mark.model]


def export(out: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["export-training-set", str(out), *args])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def copy_name(photo) -> Path:
    name = Path(photo.file_name)
    return Path(f"{name.stem}-{photo.content_hash[:12]}{name.suffix}")


def test_reviewed_photos_go_where_train_reads_them(nights, use_settings, tmp_path):
    use_settings(nights.settings)
    anna = logged_in(nights.settings)
    a, b, c = nights.flagged[nights.first][:3]
    decide(anna, a, "tops/shirt")
    decide(anna, b, "bottoms/jeans")
    decide(anna, b, "bottoms/skirt")  # decided again: the latest answer counts
    decide(anna, c, "tops/t-shirt")
    out = tmp_path / "reviewed"

    summary = export(out)

    photos = {p: prediction(nights.settings, p) for p in (a, b, c)}
    expected = {
        Path("tops/shirt") / copy_name(photos[a]): photos[a].content_hash,
        Path("bottoms/skirt") / copy_name(photos[b]): photos[b].content_hash,
        Path("tops/t-shirt") / copy_name(photos[c]): photos[c].content_hash,
    }
    assert files_under(out) == expected
    assert "3 reviewed photos: 3 copied" in summary and "0 missing" in summary
    assert "tops/shirt" in summary and "bottoms/skirt" in summary
    layout = read_layout(out, min_subs=1)  # what `refund-sorter train` would read
    assert len(layout.files) == 3 and not layout.stray_files

    # Again: nothing copied twice. Then one answer changes: its copy moves.
    assert "0 copied" in export(out) and "3 already there" in export(out)
    decide(anna, a, "tops/sweater")
    today = datetime.now(UTC).date().isoformat()
    summary = export(out, "--since", today)
    assert "1 copied" in summary and "1 of them moved to a new category" in summary
    assert (out / "tops/sweater" / copy_name(photos[a])).is_file()
    assert not (out / "tops/shirt").exists() or not any((out / "tops/shirt").iterdir())

    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert "0 reviewed photos" in export(tmp_path / "later", "--since", tomorrow)


def test_a_photo_whose_file_is_gone_is_reported_and_the_rest_copied(nights, use_settings, tmp_path):
    use_settings(nights.settings)
    anna = logged_in(nights.settings)
    kept, gone = nights.flagged[nights.last][:2]
    decide(anna, kept, "tops/shirt")
    decide(anna, gone, "bottoms/jeans")
    gone_path = Path(prediction(nights.settings, gone).final_path)
    moved_away = gone_path.with_name(gone_path.name + ".elsewhere")
    gone_path.rename(moved_away)
    try:
        summary = export(tmp_path / "out", "--since", datetime.now(UTC).date().isoformat())
    finally:
        moved_away.rename(gone_path)

    assert f"missing {gone_path}: No such file or directory" in summary
    reviewed, copied = map(int, re.search(r"(\d+) reviewed photos: (\d+) copied", summary).groups())
    assert copied == reviewed - 1 and "1 missing" in summary
    assert (tmp_path / "out/tops/shirt" / copy_name(prediction(nights.settings, kept))).is_file()
    assert list((tmp_path / "out").rglob("*.part")) == []


def test_a_date_that_is_not_one_is_a_plain_error(nights, use_settings, tmp_path):
    use_settings(nights.settings)
    result = CliRunner().invoke(main, ["export-training-set", str(tmp_path), "--since", "May"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'May' does not match the format '%Y-%m-%d'" in result.output
