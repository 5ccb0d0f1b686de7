"""Throughput benchmarks: model inference, bulk enqueue, end-to-end local sweep.

python bench/throughput.py inference --model MODEL --data DIR [--batch-sizes 1,8,32,64]
python bench/throughput.py enqueue --count 10000 [--broker redis://127.0.0.1:6379/15]
python bench/throughput.py sweep --model MODEL --data DIR
"""

import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


@click.group()
def cli() -> None:
    """Benchmarks for refund-sorter."""


@cli.command()
@click.option("--model", type=click.Path(path_type=Path), required=True)
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--batch-sizes", default="1,8,32,64")
@click.option("--limit", default=256, help="Images to classify per setting.")
def inference(model, data, batch_sizes, limit) -> None:
    """Images/s of the worker's path: read, decode, preprocess, forward (bf16 on CPU)."""
    import torch

    from classifier.predict import Classifier
    from classifier.taxonomy import read_layout
    from refund_sorter.images import open_rgb

    clf = Classifier.from_path(model, "auto")
    files = [p for p, _ in read_layout(data, min_subs=1).files][:limit]
    print(f"machine: {machine()}; device {clf.device}; {len(files)} images")
    clf.predict_images([open_rgb(files[0], clf.checkpoint.image_size)])  # warm-up
    for bs in (int(b) for b in batch_sizes.split(",")):
        start = time.perf_counter()
        for i in range(0, len(files), bs):
            chunk = files[i : i + bs]
            clf.predict_images([open_rgb(p, clf.checkpoint.image_size) for p in chunk])
        elapsed = time.perf_counter() - start
        print(f"batch {bs:>3}: {len(files) / elapsed:7.1f} images/s (decode + forward)")
    x = torch.randint(
        0, 255, (64, 3, clf.checkpoint.image_size, clf.checkpoint.image_size), dtype=torch.uint8
    )
    for name, autocast in (("fp32", False), ("bf16 autocast", True)):
        net = clf.net
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            xf = (x.float() / 255).contiguous(memory_format=torch.channels_last)
            net(xf)
            start = time.perf_counter()
            for _ in range(3):
                net(xf)
            elapsed = time.perf_counter() - start
        print(f"forward only, batch 64, {name}: {3 * 64 / elapsed:7.1f} images/s")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


@cli.command()
@click.option("--count", default=10_000)
@click.option("--broker", default="redis://127.0.0.1:6379/15")
def enqueue(count, broker) -> None:
    """Time the producer's bulk publish of COUNT tasks to a scratch Redis database."""
    os.environ["REFUND_SORTER_BROKER_URL"] = broker
    import redis

    from refund_sorter.celery_app import publish
    from refund_sorter.messages import CLASSIFY_QUEUE, WorkItem

    r = redis.Redis.from_url(broker)
    r.delete(CLASSIFY_QUEUE)
    items = [
        WorkItem(f"/data/incoming/img-{i:06d}.jpg", f"{i:064x}", "bench") for i in range(count)
    ]
    start = time.perf_counter()
    publish(items)
    elapsed = time.perf_counter() - start
    queued = r.llen(CLASSIFY_QUEUE)
    r.delete(CLASSIFY_QUEUE)
    print(
        f"published {count} tasks in {elapsed:.2f} s ({count / elapsed:.0f} tasks/s); "
        f"queue length seen: {queued}"
    )


@cli.command()
@click.option("--model", type=click.Path(path_type=Path), required=True)
@click.option("--count", default=10_000, help="Small generated images to sweep.")
@click.option("--broker", default="redis://127.0.0.1:6379/15")
@click.option("--database-url", default="", help="Default: a scratch SQLite file.")
def producer(model, count, broker, database_url) -> None:
    """The whole producer on COUNT new images: scan, hash, sniff, rows, publish."""
    import numpy as np
    import redis
    from PIL import Image

    home = Path(tempfile.mkdtemp(prefix="refund-sorter-bench-"))
    try:
        incoming = home / "incoming"
        incoming.mkdir()
        rng = np.random.default_rng(0)
        for i in range(count):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(incoming / f"return-{i:06d}.png")
        os.environ.update(
            REFUND_SORTER_HOME=str(home),
            REFUND_SORTER_MODEL_PATH=str(model),
            REFUND_SORTER_BROKER_URL=broker,
        )
        if database_url:
            os.environ["REFUND_SORTER_DATABASE_URL"] = database_url
        from producer.sweep import run_sweep
        from refund_sorter.celery_app import publish
        from refund_sorter.config import get_settings
        from refund_sorter.db import upgrade
        from refund_sorter.messages import CLASSIFY_QUEUE

        settings = get_settings()
        upgrade(settings.database_url)
        r = redis.Redis.from_url(broker)
        r.delete(CLASSIFY_QUEUE)
        start = time.perf_counter()
        run = run_sweep(settings, dispatch=publish, trigger="manual").run
        elapsed = time.perf_counter() - start
        print(
            f"{run.found} images found, {run.enqueued} enqueued, {r.llen(CLASSIFY_QUEUE)} "
            f"on the queue: {elapsed:.1f} s ({run.enqueued / elapsed:.0f} images/s)"
        )
        r.delete(CLASSIFY_QUEUE)
    finally:
        shutil.rmtree(home)


@cli.command()
@click.option("--model", type=click.Path(path_type=Path), required=True)
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--batch-size", default=32)
def sweep(model, data, batch_size) -> None:
    """End-to-end local sweep (scan, hash, classify, SQLite, move, CSV) over DATA's images."""
    home = Path(tempfile.mkdtemp(prefix="refund-sorter-bench-"))
    try:
        incoming = home / "incoming"
        shutil.copytree(data, incoming)
        n = sum(1 for p in incoming.rglob("*") if p.is_file())
        os.environ.update(
            REFUND_SORTER_HOME=str(home),
            REFUND_SORTER_MODEL_PATH=str(model),
            REFUND_SORTER_BATCH_SIZE=str(batch_size),
        )
        from click.testing import CliRunner

        from cli import main
        from refund_sorter.db import upgrade

        upgrade(f"sqlite:///{home / 'refund-sorter.db'}")
        start = time.perf_counter()
        result = CliRunner().invoke(main, ["sweep", "--local"], catch_exceptions=False)
        elapsed = time.perf_counter() - start
        print(result.output.strip().splitlines()[-3:])
        print(f"machine: {machine()}")
        print(
            f"local sweep of {n} images: {elapsed:.1f} s, {n / elapsed:.1f} images/s "
            f"(includes loading the model); peak RSS {peak_rss_mib():.0f} MiB"
        )
    finally:
        shutil.rmtree(home)


@cli.command()
@click.option("--model", type=click.Path(path_type=Path), required=True)
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--limit", default=1000, help="Images to sweep.")
@click.option(
    "--processes", default=0, help="Worker processes (--concurrency); 0: the worker's default."
)
@click.option("--threads", default=0, help="REFUND_SORTER_TORCH_THREADS; 0: the worker's default.")
@click.option("--batch-size", default=32)
@click.option("--broker", default="redis://127.0.0.1:6379/14")
@click.option("--database-url", default="", help="Default: a scratch SQLite file.")
def celery(model, data, limit, processes, threads, batch_size, broker, database_url) -> None:
    """A sweep through Redis and one real Celery worker: images/s from publish to finish."""
    import subprocess

    import redis
    from click.testing import CliRunner

    home = Path(tempfile.mkdtemp(prefix="refund-sorter-bench-"))
    try:
        files = sorted(p for p in Path(data).rglob("*") if p.is_file())[:limit]
        for i, src in enumerate(files):
            (home / "incoming").mkdir(parents=True, exist_ok=True)
            shutil.copy(src, home / "incoming" / f"{i:06d}{src.suffix}")
        env = {
            **os.environ,
            "REFUND_SORTER_HOME": str(home),
            "REFUND_SORTER_MODEL_PATH": str(model.absolute()),
            "REFUND_SORTER_BROKER_URL": broker,
            "REFUND_SORTER_BATCH_SIZE": str(batch_size),
            "REFUND_SORTER_TORCH_THREADS": str(threads),  # 0: cores / processes
            "REFUND_SORTER_DEVICE": "cpu",
        }
        if database_url:
            env["REFUND_SORTER_DATABASE_URL"] = database_url
        os.environ.update(env)
        redis.Redis.from_url(broker).flushdb()
        from cli import main
        from refund_sorter.config import get_settings
        from refund_sorter.db import upgrade

        upgrade(get_settings().database_url)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker"]
            + (["-c", str(processes)] if processes else []),
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
        )
        try:
            time.sleep(8)  # let the worker connect and its processes load the model
            start = time.perf_counter()
            result = CliRunner().invoke(main, ["sweep", "--wait"], catch_exceptions=False)
            elapsed = time.perf_counter() - start
        finally:
            worker.terminate()
            worker.wait(timeout=60)
        print(result.output.strip().splitlines()[-2])
        print(f"machine: {machine()}")
        print(
            f"{len(files)} images, {processes or 'default'} process(es) x "
            f"{threads or 'default'} thread(s), batch "
            f"{batch_size}: {elapsed:.1f} s, {len(files) / elapsed:.1f} images/s "
            "(publish to last commit, model loading included)"
        )
    finally:
        shutil.rmtree(home)


if __name__ == "__main__":
    cli()
