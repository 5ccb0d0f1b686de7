"""Shared fixtures: tiny generated images, data folders, broken files and small models; and
the guard that holds every test to the markers it carries.

Everything is written under pytest's tmp_path, which pytest removes itself (it keeps only
the last few runs), so no fixture leaves files in the repository.

A test that opens PostgreSQL or Redis, or starts chromium, docker-compose, prometheus,
promtool or podman, says so with a marker (``services``, ``browser``, ``compose``,
``prometheus``, ``containers``; see pyproject.toml), so that
``pytest -m "not services and not browser and not compose and not prometheus and not
containers and not slow"`` runs without any of them. The guard fails a test that lacks the
marker for what it uses: one that asks for a fixture of the servers, connects to port 5432 or
6379 (through Python's sockets, or through ``psycopg.connect`` for libpq's), or launches one
of those programs.
Processes a test starts get their servers from those fixtures, so the guard sees them there.

A test that loads or trains a model says so with the marker ``model``: what a model outputs
depends on the CPU (its instructions, and the precision ``auto`` picks there) and on the
runtime, so the README's test command runs these tests a second time on PyTorch and, on a
CPU with AVX-512, as an AVX2-only CPU computes (tests/second-pass.sh). Models of random
weights count too: their confidences lie close together, where the CPU's rounding reorders
them. The guard fails a test without the marker that asks for a fixture that loads or
trains a model (the workers and CLI processes a test starts get their model from one), or
that loads a model file with PyTorch or trains in its own process.
"""

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image

# ------------------------------------------------------------------- markers, and the guard

SERVER_PORTS = {5432: "PostgreSQL", 6379: "Redis"}
PROGRAMS = {
    "chromium": "browser",
    "chromium-browser": "browser",
    "docker-compose": "compose",
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "redis-server": "services",  # a Redis of the test's own (tests/sweep: RedisServer)
    "podman": "containers",  # the stack built and run in containers (tests/test_containers.py)
}
# The sweep tests' fixtures that hand out a database or a Redis (tests/sweep/conftest.py).
SERVER_FIXTURES = {"pg_url", "fresh_pg_url", "make_pg_database", "broker_url", "redis_server"}
# The fixtures that load or train a model (the rest of the suite builds on them: the sweep
# tests' settings name ``tiny_model``'s file, the review desk's nights are ``review_model``'s).
MODEL_FIXTURES = {"trained_model", "tiny_model", "review_model"}
# Where a model runs in the test's own process: PyTorch reading a model file, or training.
MODEL_FRAMES = {
    ("torch.serialization", "load"): "a model file (torch.load)",
    ("classifier.train", "train"): "a network in training",
}

_running: dict = {
    "item": None,
    "used": {},
    "watch_models": False,
}  # the test in setup or call, what it used unmarked


def _uses(marker: str, what: str) -> None:
    item = _running["item"]
    if item is not None and item.get_closest_marker(marker) is None:
        _running["used"].setdefault(marker, what)


def _audit(event: str, args: tuple) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and len(address) >= 2 and address[1] in SERVER_PORTS:
            _uses("services", f"{SERVER_PORTS[address[1]]} (port {address[1]})")
    elif event == "subprocess.Popen":
        executable, argv = args[0], args[1]
        name = Path(os.fsdecode(executable or argv[0])).name
        if name in PROGRAMS:
            _uses(PROGRAMS[name], name)
    elif event == "open" and _running["watch_models"] and "torch" in sys.modules:
        what = _model_frame()
        if what is not None:
            _uses("model", what)


def _model_frame() -> str | None:
    """What a file is opened for, when PyTorch loads it as a model or training runs."""
    frame = sys._getframe(2)
    while frame is not None:
        what = MODEL_FRAMES.get((frame.f_globals.get("__name__"), frame.f_code.co_name))
        if what is not None:
            return what
        frame = frame.f_back
    return None


_psycopg_connect = psycopg.connect


def _connect_postgresql(conninfo: str = "", **kwargs):
    port = psycopg.conninfo.conninfo_to_dict(conninfo, **kwargs).get("port")
    ports = str(port or os.environ.get("PGPORT", 5432)).split(",")  # a port per host
    if "5432" in ports:
        _uses("services", "PostgreSQL")
    return _psycopg_connect(conninfo, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_audit)  # for good: an audit hook cannot be removed
    psycopg.connect = _connect_postgresql  # SQLAlchemy's psycopg dialect connects through it


def _check(item: pytest.Item) -> None:
    """After a test's setup or call: fail it when it used what it has no marker for."""
    used = _running["used"]
    _running.update(item=None, used={}, watch_models=False)
    if used:
        pytest.fail(
            "; ".join(f"{item.nodeid} {_missing(marker, what)}" for marker, what in used.items()),
            pytrace=False,
        )


def _missing(marker: str, what: str) -> str:
    return (
        f"uses {what} but is not marked {marker!r} (add @pytest.mark.{marker}, or "
        f"pytestmark = pytest.mark.{marker} to its module)"
    )


def _watch(item: pytest.Item) -> None:
    # Looking at the stack on every file opened is for tests that lack the marker alone.
    _running.update(item=item, used={}, watch_models=item.get_closest_marker("model") is None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    for marker, names in (("services", SERVER_FIXTURES), ("model", MODEL_FIXTURES)):
        fixtures = sorted(names & set(item.fixturenames))
        if fixtures and item.get_closest_marker(marker) is None:
            what = f"the fixture {fixtures[0]}"
            pytest.fail(f"{item.nodeid} {_missing(marker, what)}", pytrace=False)
    _watch(item)
    try:
        return (yield)
    finally:
        _check(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    _watch(item)
    try:
        return (yield)
    finally:
        _check(item)


IMAGE_SIDE = 40

# Each class of the generated data sets is visible at a glance: a colour per sub category
# and the stripes' direction per main category (horizontal for tops, vertical for bottoms).
CLASS_STYLES: dict[str, tuple[tuple[int, int, int], str]] = {
    "tops/shirt": ((210, 40, 40), "h"),
    "tops/sweater": ((40, 170, 60), "h"),
    "bottoms/jeans": ((40, 70, 210), "v"),
    "bottoms/skirt": ((230, 210, 40), "v"),
}


def _style(label: str) -> tuple[tuple[int, int, int], str]:
    if label in CLASS_STYLES:
        return CLASS_STYLES[label]
    digest = hashlib.sha256(label.encode()).digest()
    return (digest[0], digest[1], digest[2]), "hv"[digest[3] % 2]


def draw_class_image(label: str, rng: np.random.Generator, side: int = IMAGE_SIDE) -> Image.Image:
    """A noisy, striped image in the colour of ``label`` ("main/sub")."""
    colour, direction = _style(label)
    arr = np.empty((side, side, 3), dtype=np.float64)
    arr[:] = np.array(colour) + rng.integers(-20, 21, size=3)
    period = int(rng.integers(6, 10))
    offset = int(rng.integers(0, period))
    stripes = ((np.arange(side) + offset) % period) < period // 2
    if direction == "h":
        arr[stripes, :, :] *= 0.45
    else:
        arr[:, stripes, :] *= 0.45
    arr += rng.normal(0, 8, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """Write a small image file; the format follows the suffix (.jpg, .png, .webp)."""

    def make(
        path: Path,
        colour: tuple[int, int, int] = (200, 50, 50),
        size: tuple[int, int] = (IMAGE_SIDE, IMAGE_SIDE),
    ) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, colour).save(path)
        return path

    return make


def write_dataset(root: Path, counts: dict[str, int], seed: int = 0, suffix: str = ".png") -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label, n in counts.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw_class_image(label, rng).save(folder / f"img_{seed}_{i:03d}{suffix}")
    return root


@pytest.fixture(scope="session")
def make_dataset() -> Callable[..., Path]:
    """Write a ``<main>/<sub>/<image>`` folder: ``make_dataset(root, {"tops/shirt": 5})``.

    The same seed gives the same images; use another seed for held-out data.
    """

    return write_dataset


@pytest.fixture
def make_broken_files() -> Callable[[Path], dict[str, Path]]:
    """Write the usual unreadable files into a folder: corrupt, truncated, empty, text."""

    def make(folder: Path) -> dict[str, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        jpeg = folder / "truncated.jpg"
        rng = np.random.default_rng(1)
        noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), mode="RGB")
        noisy.save(jpeg, quality=95)
        data = jpeg.read_bytes()
        jpeg.write_bytes(data[: len(data) // 2])
        corrupt = folder / "corrupt.png"
        corrupt.write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
        empty = folder / "empty.jpg"
        empty.write_bytes(b"")
        text = folder / "notes.jpg"
        text.write_text("this is a shopping list, not a photo\n")
        return {"truncated": jpeg, "corrupt": corrupt, "empty": empty, "text": text}

    return make


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint with untrained (random) weights for tops/{shirt,sweater} and
    bottoms/{jeans,skirt}, 32 px input. Enough to test anything but accuracy."""
    from model_support import save_random_model

    from refund_sorter.taxonomy import Taxonomy

    taxonomy = Taxonomy(
        main=("bottoms", "tops"),
        sub=("jeans", "skirt", "shirt", "sweater"),
        sub_to_main=(0, 0, 1, 1),
    )
    path = tmp_path_factory.mktemp("random_model") / "random.pt"
    save_random_model(path, taxonomy)
    return path


# What ``trained_model`` trains: 4 classes (2 main x 2 sub), 24 training and 8 held-out
# images each, 32 px, on the CPU, 4 epochs of 5 steps. With 2 epochs of 2 steps BatchNorm's
# running statistics had barely moved and some seeds scored near chance. How far this
# recipe's figures sit above the tests' bounds, over seeds, in fp32 and bf16:
# bench/training_tests.py.
SMALL_RECIPE = {"epochs": 4, "image_size": 32, "batch_size": 16, "device": "cpu"}


def train_small_model(root: Path, seed: int = 0, precision: str = "auto"):
    """Train ``SMALL_RECIPE`` on generated images under ``root``; returns (summary,
    held-out folder, echoed lines). The held-out folder also holds 3 images of tops/vest, a
    class the training data lacks."""
    from model_support import SCRATCH

    from classifier.train import train
    from training.recipe import TrainConfig

    train_dir = write_dataset(root / "train", dict.fromkeys(CLASS_STYLES, 24), seed=0)
    held_out = write_dataset(root / "held_out", dict.fromkeys(CLASS_STYLES, 8), seed=1)
    write_dataset(held_out, {"tops/vest": 3}, seed=2)
    cfg = TrainConfig(**SMALL_RECIPE, **SCRATCH, val_dir=held_out, seed=seed, precision=precision)
    lines: list[str] = []
    summary = train(train_dir, root / "model.pt", cfg, echo=lines.append)
    return summary, held_out, lines


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory):
    """``train_small_model`` once per session. A suite run with REFUND_SORTER_PRECISION=fp32
    (or bf16) trains in that precision too."""
    precision = os.environ.get("REFUND_SORTER_PRECISION", "auto")
    return train_small_model(tmp_path_factory.mktemp("trained"), precision=precision)
