"""REFUND_SORTER_FILE_BY_CATEGORY: a classified photo goes to processed/<main>/<sub>/, the
same whether a worker classified it tonight or the sweep found a copy of one it knew."""

from pathlib import Path

import pytest
from click.testing import CliRunner
from sweep_support import Incoming, add_images, all_predictions, files_under, sha256

from cli import main

pytestmark = pytest.mark.model


def sweep(settings, use_settings) -> str:
    use_settings(settings)
    result = CliRunner().invoke(main, ["sweep", "--local"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_classified_photos_are_filed_by_category(make_settings, use_settings):
    settings = make_settings(file_by_category=True)
    use_settings(settings)
    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
    incoming = Incoming(settings.incoming_dir)
    add_images(incoming, 12, seed=5)  # a third of them in a nested folder

    sweep(settings, use_settings)

    rows = {p.content_hash: p for p in all_predictions(settings)}
    processed = settings.processed_dir.absolute()
    expected = {
        Path(rows[h].main_category) / rows[h].sub_category / rel.name: h
        for rel, h in incoming.images.items()
    }
    assert files_under(settings.processed_dir) == expected
    assert files_under(settings.incoming_dir) == {}
    for rel, content_hash in expected.items():
        assert Path(rows[content_hash].final_path) == processed / rel
    assert len({p.main_category for p in rows.values()}) == 2  # both main categories occur

    # The next night, a copy of a known photo under a new name is filed with the original.
    (first_rel, first_hash) = next(iter(expected.items()))
    copy = settings.incoming_dir / "again" / "copy-of-it.jpg"
    copy.parent.mkdir()
    copy.write_bytes((processed / first_rel).read_bytes())
    assert "0 still queued" in sweep(settings, use_settings)
    filed_copy = processed / first_rel.parent / "copy-of-it.jpg"
    assert sha256(filed_copy.read_bytes()) == first_hash
    assert files_under(settings.incoming_dir) == {}
