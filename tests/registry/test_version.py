"""registry/version.py: a model's version, hashed once per model file, and which work is
for which model (which model serves: tests/sweep/test_model_registry.py)."""

import hashlib
import os

import pytest

import registry.version
from registry.version import is_for_model, model_version


@pytest.fixture
def hashes(monkeypatch) -> list[str]:
    """The files hashed from now on (the real hash still runs)."""
    hashed = []
    real = registry.version.sha256_file

    def counting(source):
        hashed.append(source.name)
        return real(source)

    monkeypatch.setattr(registry.version, "sha256_file", counting)
    return hashed


def sha12(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def test_the_same_file_is_hashed_once(tmp_path, hashes):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights one")

    assert model_version(model) == model_version(model) == sha12(b"weights one")
    assert model_version(tmp_path / ".." / tmp_path.name / "model.pt") == sha12(b"weights one")

    assert len(hashes) == 1


def test_a_replaced_or_rewritten_file_gets_its_new_version(tmp_path, hashes):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights one")
    assert model_version(model) == sha12(b"weights one")

    new = tmp_path / "new.pt"
    new.write_bytes(b"weights two")  # same size, another file: how a model is deployed
    os.replace(new, model)
    assert model_version(model) == sha12(b"weights two")

    model.write_bytes(b"weights three, written in place")
    assert model_version(model) == sha12(b"weights three, written in place")

    same = os.stat(model)
    os.utime(model, ns=(same.st_atime_ns, same.st_mtime_ns + 1))  # touched, same bytes
    assert model_version(model) == sha12(b"weights three, written in place")

    assert len(hashes) == 4
    assert model_version(model) == sha12(b"weights three, written in place")
    assert len(hashes) == 4


def test_work_is_for_the_model_it_was_enqueued_for():
    version = sha12(b"weights one")

    assert is_for_model(version, version)
    assert not is_for_model(version, "0123456789ab")
    assert not is_for_model(version, None)  # no model at all: no work is for it
