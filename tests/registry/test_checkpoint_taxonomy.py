"""registry/checkpoint_taxonomy.py: the categories and figures of a model file, read
without PyTorch, are the ones PyTorch reads; and reading a file never runs code from it."""

import io
import pickle
import zipfile
from pathlib import Path

import pytest

from classifier import checkpoint
from classifier.checkpoint import load_checkpoint
from refund_sorter.errors import UserError
from registry import checkpoint_taxonomy
from registry.checkpoint_taxonomy import checkpoint_figures, read_payload, read_taxonomy

SHIPPED = Path(__file__).resolve().parents[2] / "assets/model/refund-sorter-resnet18.pt"


def test_the_format_tags_agree():
    assert checkpoint_taxonomy.FORMAT == checkpoint.FORMAT
    assert checkpoint.FORMAT in checkpoint.READABLE_FORMATS


@pytest.mark.model
@pytest.mark.parametrize("which", ["random", "shipped"])
def test_the_taxonomy_is_the_one_torch_loads(which, random_checkpoint):
    path = random_checkpoint if which == "random" else SHIPPED
    assert read_taxonomy(path) == load_checkpoint(path).taxonomy


@pytest.mark.model
def test_the_figures_are_what_the_checkpoint_says_of_itself():
    loaded = load_checkpoint(SHIPPED)

    figures = checkpoint_figures(read_payload(SHIPPED))

    assert figures["metrics"] == loaded.meta["metrics"]
    assert (figures["n_train"], figures["n_val"]) == (loaded.meta["n_train"], loaded.meta["n_val"])
    assert figures["validation"] == loaded.meta["validation"]
    assert figures["review_threshold"] == loaded.review_threshold
    assert figures["temperature"] == loaded.temperature
    assert figures["int8_agreement"] == loaded.int8["agreement"]
    assert figures["openvino_int8_agreement"] == loaded.openvino_int8["agreement"]
    # Not figures: every epoch's history and every recipe argument.
    assert "history" not in figures and "args" not in figures


def test_a_file_that_is_no_checkpoint_has_no_figures(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("a shopping list\n")

    with pytest.raises(UserError, match="is not a readable refund-sorter checkpoint"):
        read_payload(path)


class Boom:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_file_that_would_run_code_is_refused_unrun(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"format": "x", "taxonomy": Boom()}))

    with pytest.raises(
        UserError, match=r"not a readable refund-sorter checkpoint.*builtins\.print"
    ):
        read_taxonomy(path)
    assert "this ran" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "model file not found"),
        (b"not a zip", "not a readable refund-sorter checkpoint"),
        ("other/data.pkl", "not format refund-sorter-checkpoint/1"),
        ("nothing", "not a PyTorch file"),
    ],
)
def test_anything_else_is_a_plain_error(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(content, pickle.dumps({"format": "something else"}))
        path.write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match=message):
        read_taxonomy(path)


def test_the_figures_name_each_data_folder_but_not_every_photo_seen():
    from cli.registry import figure_lines

    payload = {
        "meta": {
            "n_train": 20,
            "datasets": [
                {"path": "/data/base", "photos": 12},
                {"path": "/data/reviewed", "photos": 8},
            ],
            "content_hashes": ["a" * 64, "b" * 64],
        }
    }

    figures = checkpoint_figures(payload)

    assert "content_hashes" not in figures
    assert "trained on 20 photos of /data/base (12 photos), /data/reviewed (8 photos)" in (
        figure_lines(figures)
    )
