"""Throughput benchmarks, run by hand (never in CI). One command prints the whole table:

    python bench/throughput.py table --model MODEL --data DIR [--limit 1800] [--json FILE]

It measures, on the same photos and model: one image at a time (batch 1), the model alone
on ready tensors, the in-process pipeline limit (read, decode, resize and forward on all
cores, the next batch decoding while the current one is in the forward pass), ``sweep
--local``, and a sweep through Redis and a real ``celery -A worker worker`` with 1 pool
process and with the worker's default; each as images/s and as a share of the limit, with
each worker process's peak memory and the time to publish 10,000 images' tasks. Each Celery
row is the median of ``--repeat`` sweeps, and the limit the median of its passes, one of
them just before each sweep.

    python bench/throughput.py shadow --model MODEL --data DIR [--candidate FILE] [--repeat 5]

measures what a registered candidate costs (shadow runs): sweeps through a real worker with
and without one, taking turns, and the ratio of their medians.

    python bench/throughput.py scale --count 10000 --count 100000

times the producer (scan, hash, rows, publish) and the export per image, with peak memory.
"""

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device) -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{cpu_name()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


def copy_photos(data: Path, limit: int, incoming: Path) -> list[Path]:
    """The first ``limit`` photos of ``data`` (sorted), copied flat into ``incoming``."""
    files = sorted(p for p in Path(data).rglob("*") if p.is_file())[:limit]
    incoming.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(files):
        shutil.copy(src, incoming / f"{i:06d}{src.suffix}")
    return sorted(incoming.iterdir())


# ------------------------------------------------------------------------ in-process rows


def decode(clf, path: Path):
    from refund_sorter.images import open_rgb

    return clf.preset(open_rgb(path.read_bytes(), min_size=clf.checkpoint.image_size))


def batch_one(clf, files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        clf.predict_tensors([decode(clf, path)])
    return len(files) / (time.perf_counter() - start)


def model_alone(clf, batch: int, rounds: int = 10) -> float:
    import torch

    size = clf.checkpoint.image_size
    x = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8)
    clf.predict_tensors(x)
    if clf.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(rounds):
        clf.predict_tensors(x)
    if clf.device.type == "cuda":
        torch.cuda.synchronize()
    return rounds * batch / (time.perf_counter() - start)


def forward_core_ms(clf, batch: int) -> float:
    """Milliseconds of one core to run the model on one photo: the same model, runtime and
    precision as ``clf``, on one thread, at ``batch``."""
    import torch

    from classifier.predict import Classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the OpenVINO network takes its thread count from here too
    try:
        one = Classifier(clf.checkpoint, "cpu", clf.precision, runtime=clf.runtime)
        return 1000 / statistics.median(model_alone(one, batch) for _ in range(3))
    finally:
        torch.set_num_threads(threads)


def decode_core_ms(clf, files: list[Path]) -> float:
    """Milliseconds of one core to read, decode and resize one photo."""
    start = time.process_time()
    for path in files:
        decode(clf, path)
    return 1000 * (time.process_time() - start) / len(files)


def _one_core(model: Path, runtime: str, files: list[Path], batch: int, ready, go, out) -> None:
    """One process of ``every_core_at_once``: one thread, decode then forward, batch by
    batch, timed from ``go``."""
    import torch

    from classifier.predict import Classifier

    torch.set_num_threads(1)
    clf = Classifier.from_path(model, "cpu", runtime=runtime)
    clf.predict_tensors([decode(clf, p) for p in files[:batch]])  # warm-up
    ready.release()
    go.wait()
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        clf.predict_tensors([decode(clf, p) for p in files[i : i + batch]])
    out.put(time.perf_counter() - start)


def every_core_at_once(model: Path, runtime: str, files: list[Path], batch: int) -> float:
    """What the ideal bound assumes, measured: one process per core, each on one thread
    decoding and classifying its share of ``files`` in turn, all at once (no queue, no
    database, no files moved): images/s of them all."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    cores = os.cpu_count()
    ready, go, out = spawn.Semaphore(0), spawn.Event(), spawn.Queue()
    shares = [files[i::cores] for i in range(cores)]
    workers = [
        spawn.Process(target=_one_core, args=(model, runtime, share, batch, ready, go, out))
        for share in shares
    ]
    for w in workers:
        w.start()
    for _ in workers:
        ready.acquire()
    go.set()
    slowest = max(out.get() for _ in workers)
    for w in workers:
        w.join()
    return len(files) / slowest


def pipeline_limit(clf, files: list[Path], batch: int) -> float:
    """Read, decode, resize and forward on all cores: decoding threads prepare the next
    batch while the current one is in the forward pass."""
    import torch

    batches = [files[i : i + batch] for i in range(0, len(files), batch)]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        start = time.perf_counter()
        ahead = [pool.submit(decode, clf, p) for p in batches[0]]
        for i in range(len(batches)):
            tensors = [f.result() for f in ahead]
            if i + 1 < len(batches):
                ahead = [pool.submit(decode, clf, p) for p in batches[i + 1]]
            clf.predict_tensors(torch.stack(tensors))
        return len(files) / (time.perf_counter() - start)


# ------------------------------------------------------------------------------ sweep rows


class Home:
    """A scratch REFUND_SORTER_HOME with the photos in incoming/ and a migrated SQLite."""

    def __init__(
        self, data: Path, limit: int, model: Path, broker: str, batch: int, device, postgres=""
    ):
        self.path = Path(tempfile.mkdtemp(prefix="refund-sorter-bench-"))
        self.postgres = postgres
        self.incoming = self.path / "incoming"
        self.n = len(copy_photos(data, limit, self.incoming))
        self.env = {
            **os.environ,
            "REFUND_SORTER_HOME": str(self.path),
            "REFUND_SORTER_MODEL_PATH": str(Path(model).absolute()),
            "REFUND_SORTER_BROKER_URL": broker,
            "REFUND_SORTER_BATCH_SIZE": str(batch),
            "REFUND_SORTER_DEVICE": device,
        }
        from refund_sorter.db import upgrade

        url = f"sqlite:///{self.path / 'refund-sorter.db'}"
        if postgres:  # a database of its own on that server, dropped by remove()
            self.database = f"rs_bench_{self.path.name.rsplit('-', 1)[-1].lower()}"
            self.env.pop("REFUND_SORTER_DATABASE_URL", None)
            self._admin(f'CREATE DATABASE "{self.database}"')
            url = f"{postgres.rsplit('/', 1)[0]}/{self.database}"
        self.env["REFUND_SORTER_DATABASE_URL"] = url
        upgrade(url)

    def _admin(self, sql: str) -> None:
        import psycopg

        from refund_sorter.db import dispose

        if "REFUND_SORTER_DATABASE_URL" in self.env:
            dispose(self.env["REFUND_SORTER_DATABASE_URL"])
        admin = self.postgres.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql)

    def settings(self):
        from refund_sorter.config import Settings

        keys = {k: v for k, v in self.env.items() if k.startswith("REFUND_SORTER_")}
        old = {k: os.environ.get(k) for k in keys}
        os.environ.update(keys)
        try:
            return Settings()
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

    def left(self) -> int:
        return sum(1 for p in self.incoming.rglob("*") if p.is_file())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self.postgres:
            self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def local_sweep(home: Home) -> float:
    """``refund-sorter sweep --local`` as a command: images/s over its whole run."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "from cli import main; main()", "sweep", "--local"],
        cwd=ROOT,
        env=home.env,
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - start
    assert home.left() == 0, f"{home.left()} photos were not classified"
    return home.n / elapsed


def proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak resident MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(
        line.split()[1]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM")
    )
    return cpu, int(hwm) / 1024


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def warmup_photos(folder: Path, count: int, side: int = 480) -> None:
    """``count`` photo-sized JPEGs of random colours and noise, each of its own content."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        base = rng.integers(0, 256, size=3)
        arr = base + rng.normal(0, 30, size=(side, side, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"warm-{i:04d}.jpg")


def celery_sweep(
    home: Home,
    processes: int,
    pool: str = "",
    done=None,
    loads=("loaded model",),
    warmup=0,
    celery=(sys.executable, "-m", "celery"),
) -> dict:
    """A sweep through Redis and one ``celery -A worker worker`` (``-c processes``; 0: the
    default), started once each process has logged each of ``loads``, timed from the
    producer's publish to the last file moved (and until ``done(run_id)`` is true, when
    given). With ``warmup``, a sweep of as many generated photos first, untimed: a
    process's first batches run slower than the rest. ``celery``: the command that starts
    Celery (``bench/profile_night.py`` starts it with timers in place). The result also
    holds the moments (``time.perf_counter``, one clock for every process here) the sweep
    began scanning, published its first and last task, and was seen finished."""
    import redis

    from producer.sweep import run_sweep
    from refund_sorter.celery_app import publish
    from refund_sorter.crud import get_sweep
    from refund_sorter.db import session_factory

    settings = home.settings()
    redis.Redis.from_url(settings.broker_url).flushdb()
    log = home.path / f"worker-{processes}.log"
    began = time.perf_counter()
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [*celery, "-A", "worker", "worker", "-l", "info"]
            + (["-c", str(processes)] if processes else [])
            + (["-P", pool] if pool else []),
            cwd=ROOT,
            env=home.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # The solo and threads pools load the model once, in the main process.
        loading = 1 if pool in ("solo", "threads") else processes or os.cpu_count()
        while min(log.read_text().count(line) for line in loads) < loading:
            if worker.poll() is not None or time.perf_counter() - began > 300:
                raise RuntimeError(f"the worker did not start: see {log}")
            time.sleep(0.05)
        ready = time.perf_counter() - began
        sessions = session_factory(settings.database_url)
        if warmup:
            held = home.path / "held"
            home.incoming.rename(held)
            warmup_photos(home.incoming, warmup)
            run = run_sweep(settings, dispatch=publish, trigger="manual").run
            while True:
                with sessions() as session:
                    finished = get_sweep(session, run.id).finished_at is not None
                if finished and home.left() == 0 and (done is None or done(run.id)):
                    break
                time.sleep(0.05)
            shutil.rmtree(home.incoming)
            held.rename(home.incoming)
        pids = [worker.pid, *children(worker.pid)]
        cpu_before = [proc_stat(p)[0] for p in pids]
        published = []

        def timed_publish(items) -> None:
            published.append(time.perf_counter())
            publish(items)
            published.append(time.perf_counter())

        scan_started = time.perf_counter()
        run = run_sweep(settings, dispatch=timed_publish, trigger="manual").run
        while True:
            with sessions() as session:
                finished = get_sweep(session, run.id).finished_at is not None
            if finished and home.left() == 0 and (done is None or done(run.id)):
                break
            time.sleep(0.02)
        done_at = time.perf_counter()
        elapsed = done_at - published[0]
        stats = [proc_stat(p) for p in pids]
        with sessions() as session:
            swept = get_sweep(session, run.id)
            if swept.succeeded != home.n:  # a rate counts photos classified, not failures
                raise RuntimeError(
                    f"{swept.succeeded} of {home.n} photos classified ({swept.failed} failed, "
                    f"{swept.deferred} deferred): see {log}"
                )
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return {
        "images_per_second": home.n / elapsed,
        "seconds": elapsed,
        "worker_ready_seconds": ready,
        "cores_busy": (sum(cpu for cpu, _ in stats) - sum(cpu_before)) / elapsed,
        # The main process fetches, tracks and acknowledges the messages and hands batches
        # to the pool: what it costs per image is the plumbing's share.
        "main_process_core_ms_per_image": (stats[0][0] - cpu_before[0]) * 1000 / home.n,
        "peak_mib_per_process": [round(mib) for _, mib in stats],
        "main_process_core_seconds": stats[0][0] - cpu_before[0],
        "scan_started_at": scan_started,
        "first_published_at": published[0],
        "last_published_at": published[-1],
        "done_at": done_at,
    }


def publish_time(broker: str, count: int) -> float:
    """Seconds to publish ``count`` images' classify tasks to a scratch Redis database."""
    import redis

    from refund_sorter.celery_app import publish
    from refund_sorter.messages import CLASSIFY_QUEUE, IMAGES_PER_TASK, WorkItem

    client = redis.Redis.from_url(broker)
    client.flushdb()
    items = [WorkItem(f"/srv/incoming/{i:06d}.jpg", f"{i:064x}", "bench") for i in range(count)]
    start = time.perf_counter()
    publish(items)
    elapsed = time.perf_counter() - start
    assert client.llen(CLASSIFY_QUEUE) == -(-count // IMAGES_PER_TASK)
    client.flushdb()
    return elapsed


@click.group()
def cli() -> None:
    """Benchmarks for refund-sorter."""


@cli.command()
@click.option("--model", type=click.Path(path_type=Path), required=True)
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--limit", default=1800, show_default=True, help="Photos to sweep.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--processes",
    default="1,0",
    show_default=True,
    help="Celery pool processes to measure, comma-separated; 0: the worker's default.",
)
@click.option("--pool", default="", help="Celery pool (-P); default: the worker's (prefork).")
@click.option("--skip", default="", help="Rows to leave out, comma-separated: local, celery.")
@click.option("--broker", default="redis://127.0.0.1:6379/14", show_default=True)
@click.option(
    "--postgres",
    default="",
    help="A PostgreSQL URL to an existing database (e.g. postgresql+psycopg://postgres@"
    "127.0.0.1/postgres): each sweep gets a scratch database on that server. Default: SQLite.",
)
@click.option(
    "--repeat",
    default=3,
    show_default=True,
    help="Celery sweeps per row: the row reports their median, and one more pass of the "
    "limit before each sweep joins the limit's median.",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "torch", "openvino"]),
    default="auto",
    show_default=True,
    help="The CPU runtime of every row, the workers' included (REFUND_SORTER_RUNTIME).",
)
@click.option(
    "--compile",
    "compiled",
    is_flag=True,
    help="torch.compile the network of the in-process rows (a GPU's; the workers run eager).",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the table.")
def table(
    model,
    data,
    limit,
    batch_size,
    device,
    processes,
    pool,
    skip,
    broker,
    postgres,
    repeat,
    runtime,
    compiled,
    json_path,
) -> None:
    """The whole throughput table, from one run on the same photos and model."""
    import torch

    from classifier.predict import Classifier

    os.environ["REFUND_SORTER_BROKER_URL"] = broker
    os.environ["REFUND_SORTER_RUNTIME"] = runtime
    torch.set_num_threads(os.cpu_count())
    home = Home(data, limit, model, broker, batch_size, device, postgres)
    limit_dir = Path(tempfile.mkdtemp(prefix="refund-sorter-bench-limit-"))
    rows: list[dict] = []
    try:
        clf = Classifier.from_path(model, device, runtime=runtime)
        if compiled:
            clf.net = torch.compile(clf.net)
        # The limit reads a copy of its own: sweeps move the photos out of incoming/.
        files = copy_photos(data, limit, limit_dir)
        print(
            f"{machine(clf.device)}; {home.n} photos; model {clf.version} at "
            f"{clf.checkpoint.image_size} px in {clf.runtime} {clf.precision}; batch {batch_size}"
        )

        def row(what: str, ips: float, **extra) -> None:
            rows.append({"what": what, "images_per_second": ips, **extra})
            print(f"  {what:<48} {ips:8.1f} images/s", flush=True)

        pipeline_limit(clf, files[: batch_size * 2], batch_size)  # warm-up
        passes = [pipeline_limit(clf, files, batch_size) for _ in range(3)]
        print(f"  in-process pipeline limit, passes: {', '.join(f'{x:.1f}' for x in passes)}")
        row("model alone, ready tensors", model_alone(clf, batch_size))
        row("one image at a time (batch 1)", batch_one(clf, files[:200]))
        ms = decode_core_ms(clf, files[:300])
        print(f"  read + decode + resize: {ms:.2f} core-ms per photo")
        forward_ms = forward_core_ms(clf, batch_size) if clf.device.type == "cpu" else None
        if forward_ms is not None:
            print(f"  forward pass: {forward_ms:.2f} core-ms per photo (one thread)")
            row(
                "decode + forward, a process per core at once",
                every_core_at_once(model, clf.runtime, files, batch_size),
            )
        in_process_mib = peak_rss_mib()
        if "local" not in skip:
            row("refund-sorter sweep --local", local_sweep(home))
        for n in [int(p) for p in processes.split(",")] if "celery" not in skip else []:
            label = " ".join([f"-c {n}"] * bool(n) + [f"-P {pool}"] * bool(pool)) or "no flags"
            runs = []
            for _ in range(repeat):
                # The limit again, just before the sweep: the machine's pace drifts.
                passes.append(pipeline_limit(clf, files, batch_size))
                home.remove()  # a fresh folder and database for each sweep
                home = Home(data, limit, model, broker, batch_size, device, postgres)
                runs.append(celery_sweep(home, n, pool))
                print(
                    f"    {label}: {runs[-1]['images_per_second']:.1f} images/s, limit pass "
                    f"before it {passes[-1]:.1f}",
                    flush=True,
                )
            runs.sort(key=lambda r: r["images_per_second"])
            median = dict(runs[len(runs) // 2])
            median["runs_images_per_second"] = [round(r["images_per_second"], 1) for r in runs]
            row(f"celery -A worker worker ({label})", median.pop("images_per_second"), **median)
        del clf
        limit_ips = statistics.median(passes)
        rows.insert(
            0,
            {
                "what": f"in-process pipeline limit (median of {len(passes)} passes)",
                "images_per_second": limit_ips,
                "passes": [round(x, 1) for x in passes],
            },
        )
        if forward_ms is not None:  # cores / core-seconds per photo
            ideal = os.cpu_count() * 1000 / (ms + forward_ms)
            rows.insert(1, {"what": "ideal all-core bound", "images_per_second": ideal})
        publish_s = publish_time(broker, 10_000)
        print(f"  publish 10,000 images' tasks: {publish_s:.2f} s")
    finally:
        home.remove()
        shutil.rmtree(limit_dir, ignore_errors=True)
    ideal_ips = next((r["images_per_second"] for r in rows if r["what"].startswith("ideal")), 0)
    for r in rows:
        r["share_of_limit"] = r["images_per_second"] / limit_ips
        r["share_of_ideal"] = r["images_per_second"] / ideal_ips if ideal_ips else None
    print(
        "\n| what | images/s | share of the limit | share of the ideal bound "
        "| peak MiB per worker process |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        mib = r.get("peak_mib_per_process")
        extra = ", ".join(map(str, mib)) if mib else ""
        of_ideal = f"{r['share_of_ideal']:.2f}" if r["share_of_ideal"] else ""
        print(
            f"| {r['what']} | {r['images_per_second']:.1f} | {r['share_of_limit']:.2f} "
            f"| {of_ideal} | {extra} |"
        )
    for r in rows:
        if "worker_ready_seconds" in r:
            print(
                f"{r['what']}: sweeps at {r['runs_images_per_second']} images/s (median in the "
                f"table); ready {r['worker_ready_seconds']:.1f} s after start, "
                f"{r['cores_busy']:.2f} cores busy while sweeping, main process "
                f"{r['main_process_core_ms_per_image']:.2f} core-ms per image"
            )
    report = {
        "machine": cpu_name(),
        "cores": os.cpu_count(),
        "photos": home.n,
        "batch_size": batch_size,
        "runtime": runtime,
        "decode_core_ms_per_photo": ms,
        "forward_core_ms_per_photo": forward_ms,
        "in_process_peak_mib": in_process_mib,
        "publish_10000_seconds": publish_s,
        "rows": rows,
    }
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))


def shadow_sweep(home: Home, processes: int, candidate: Path | None, warmup: int) -> dict:
    """``celery_sweep`` with ``candidate`` registered (None: without one), timed until the
    last shadow row is written too: a batch's shadow run follows its filing."""
    from sqlalchemy import func, select

    from models import ItemStatus, Prediction, ShadowPrediction
    from refund_sorter.db import session_factory
    from refund_sorter.shadow import shadow_probability
    from registry import registry

    settings = home.settings()
    if candidate is not None:
        registry.register(settings, candidate, by="bench")
    sessions = session_factory(settings.database_url)
    due: dict[int, tuple[int, int]] = {}  # per sweep: (photos due a shadow run, photos ok)

    def shadowed(run_id: int) -> bool:
        """Whether every photo of the sweep due a shadow run has its row."""
        with sessions() as session:
            if run_id not in due:
                ok = session.execute(
                    select(
                        Prediction.content_hash, Prediction.needs_review, Prediction.audited
                    ).where(Prediction.sweep_run_id == run_id, Prediction.status == ItemStatus.OK)
                ).all()
                shadows = sum(
                    candidate is not None
                    and shadow_probability(h, settings.shadow_rate, needs_review=r, audited=a)
                    is not None
                    for h, r, a in ok
                )
                due[run_id] = (shadows, len(ok))
            written = session.scalar(
                select(func.count())
                .select_from(ShadowPrediction)
                .join(Prediction, Prediction.id == ShadowPrediction.prediction_id)
                .where(Prediction.sweep_run_id == run_id)
            )
            return written >= due[run_id][0]

    # Each process loads the candidate as it starts, after its serving model.
    loads = ("loaded model", "loaded candidate model") if candidate else ("loaded model",)
    run = celery_sweep(home, processes, done=shadowed, loads=loads, warmup=warmup)
    timed = max(due)  # the warm-up sweep comes first
    return {**run, "photos_shadowed": due[timed][0], "photos_ok": due[timed][1]}


@cli.command()
@click.option("--model", type=click.Path(path_type=Path), required=True)
@click.option(
    "--candidate",
    type=click.Path(path_type=Path),
    help="The candidate to register. Default: MODEL saved again under another version (the "
    "same weights, input size and int8 calibration: a candidate that costs what the serving "
    "model costs).",
)
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--limit", default=1800, show_default=True, help="Photos to sweep.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--processes", default=0, show_default=True, help="-c; 0: the worker's default.")
@click.option("--shadow-rate", default=0.1, show_default=True)
@click.option("--broker", default="redis://127.0.0.1:6379/14", show_default=True)
@click.option(
    "--postgres",
    default="",
    help="As for table. Default: SQLite, where the pool processes' commits wait for each "
    "other, which on a sweep of a few seconds weighs more than the candidate.",
)
@click.option(
    "--repeat",
    default=5,
    show_default=True,
    help="Sweeps with a candidate and as many without, taking turns; each side reports the median.",
)
@click.option(
    "--warmup",
    default=128,
    show_default=True,
    help="Generated photos each worker sweeps first, untimed: a process's first batches run "
    "slower than the rest, which on a short sweep would weigh on the result.",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write them.")
def shadow(
    model,
    candidate,
    data,
    limit,
    batch_size,
    device,
    processes,
    shadow_rate,
    broker,
    postgres,
    repeat,
    warmup,
    json_path,
) -> None:
    """What a registered candidate costs: sweeps through a real worker with a candidate
    registered and without one, taking turns (each a fresh folder, database and worker),
    images/s from the first publish to the last file filed and the last shadow row
    written."""
    from classifier.checkpoint import load_checkpoint, save_checkpoint

    os.environ["REFUND_SORTER_BROKER_URL"] = broker
    os.environ["REFUND_SORTER_SHADOW_RATE"] = str(shadow_rate)
    scratch = Path(tempfile.mkdtemp(prefix="refund-sorter-bench-candidate-"))
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    try:
        if candidate is None:
            ckpt = load_checkpoint(model)
            note = f"{model.name} saved again, a candidate for benchmarks"
            ckpt.meta = {**ckpt.meta, "note": note}
            candidate = scratch / "candidate.pt"
            save_checkpoint(ckpt, candidate)
        print(f"{cpu_name()}, {os.cpu_count()} cores; shadow rate {shadow_rate}")
        for i in range(repeat):
            # Taking turns, so that a drift of the machine's pace weighs on both sides.
            for side in ("without", "with") if i % 2 == 0 else ("with", "without"):
                home = Home(data, limit, model, broker, batch_size, device, postgres)
                home.env["REFUND_SORTER_SHADOW_RATE"] = str(shadow_rate)
                try:
                    r = shadow_sweep(home, processes, candidate if side == "with" else None, warmup)
                finally:
                    home.remove()
                runs[side].append(r)
                print(
                    f"  {side} a candidate: {r['images_per_second']:.1f} images/s "
                    f"({r['photos_shadowed']} of {r['photos_ok']} photos shadowed)",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {
        side: statistics.median(r["images_per_second"] for r in rs) for side, rs in runs.items()
    }
    ratio = medians["with"] / medians["without"]
    shadowed = runs["with"][0]["photos_shadowed"] / runs["with"][0]["photos_ok"]
    print("\n| | images/s (median) | sweeps |")
    print("|---|---|---|")
    for side, rs in runs.items():
        each = ", ".join(f"{r['images_per_second']:.1f}" for r in rs)
        print(f"| {side} a candidate | {medians[side]:.1f} | {each} |")
    print(f"with / without: {ratio:.2f}; {shadowed:.1%} of the photos shadowed")
    if json_path:
        report = {
            "machine": cpu_name(),
            "cores": os.cpu_count(),
            "shadow_rate": shadow_rate,
            "median_images_per_second": medians,
            "ratio": ratio,
            "shadowed_share": shadowed,
            "runs": runs,
        }
        Path(json_path).write_text(json.dumps(report, indent=2))


@cli.command()
@click.option("--model", "models", multiple=True, required=True, type=click.Path(path_type=Path))
@click.option("--batch-size", default=32, show_default=True)
@click.option("--repeat", default=5, show_default=True, help="Passes of each, taking turns.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the table.")
def runtimes(models, batch_size, repeat, json_path) -> None:
    """The model alone (ready tensors, all cores) in every runtime and precision this CPU
    offers each MODEL, taking turns, the median of REPEAT passes; each against what PyTorch
    runs by itself (today's code without OpenVINO: ``auto`` on PyTorch), in the same run."""
    import torch

    from classifier.checkpoint import load_checkpoint
    from classifier.predict import Classifier, native_bf16, resolve_precision, resolve_runtime

    torch.set_num_threads(os.cpu_count())
    cpu = torch.device("cpu")
    print(f"{machine(cpu)}; batch {batch_size}; {repeat} passes each")
    entries = []
    for path in models:
        ckpt = load_checkpoint(path)
        about = {
            "path": str(path),
            "size": ckpt.image_size,
            "before": ("torch", resolve_precision("auto", cpu, ckpt.int8)),
            "picked": resolve_runtime("auto", "auto", cpu, ckpt),
        }
        precisions = ["fp32"] + ["bf16"] * native_bf16()
        for runtime, int8 in (("torch", ckpt.int8), ("openvino", ckpt.openvino_int8)):
            for precision in precisions + ["int8"] * bool(int8):
                clf = Classifier(ckpt, "cpu", precision, runtime=runtime)
                model_alone(clf, batch_size, rounds=2)  # warm-up
                entries.append({"clf": clf, "runs": [], **about})
    for _ in range(repeat):
        for entry in entries:
            entry["runs"].append(model_alone(entry["clf"], batch_size))
    print("\n| px | runtime | precision | images/s (median) | passes | x PyTorch's own pick |")
    print("|---|---|---|---|---|---|")
    report = []
    for entry in entries:
        clf = entry.pop("clf")
        entry.update(runtime=clf.runtime, precision=clf.precision)
        entry["images_per_second"] = statistics.median(entry["runs"])
    for entry in entries:
        base = next(
            e["images_per_second"]
            for e in entries
            if e["path"] == entry["path"] and (e["runtime"], e["precision"]) == entry["before"]
        )
        entry["times_before"] = entry["images_per_second"] / base
        mark = " (auto)" if (entry["runtime"], entry["precision"]) == entry["picked"] else ""
        print(
            f"| {entry['size']} | {entry['runtime']} | {entry['precision']}{mark} | "
            f"{entry['images_per_second']:.1f} | "
            f"{', '.join(f'{x:.1f}' for x in entry['runs'])} | {entry['times_before']:.2f} |"
        )
        report.append(entry)
    if json_path:
        Path(json_path).write_text(json.dumps({"machine": cpu_name(), "rows": report}, indent=2))


@cli.command("decode")
@click.option("--data", type=click.Path(path_type=Path), required=True)
@click.option("--limit", default=2000, show_default=True, help="JPEG photos to decode.")
@click.option("--size", default=128, show_default=True, help="Side of the square they become.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cuda", show_default=True)
def decode_rates(data, limit, size, batch_size, device) -> None:
    """JPEG decoding and resizing, the photo pipeline's other half: the workers' way (Pillow's
    draft decode and resize on a thread per core) against torchvision's ``decode_jpeg`` on
    DEVICE (nvJPEG on CUDA), batch by batch, each in images/s on the same photos."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    from classifier.presets import EvalPreset
    from refund_sorter.images import open_rgb

    files = sorted(p for p in Path(data).rglob("*.jpg"))[:limit]
    raw = [p.read_bytes() for p in files]
    preset = EvalPreset(size)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        start = time.perf_counter()
        list(pool.map(lambda b: preset(open_rgb(b, min_size=size)), raw))
        pillow = len(raw) / (time.perf_counter() - start)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in raw]

    def on_device() -> float:
        start = time.perf_counter()
        for i in range(0, len(tensors), batch_size):
            images = decode_jpeg(tensors[i : i + batch_size], device=device)
            torch.stack([F.interpolate(x[None].float(), (size, size))[0] for x in images])
        if device == "cuda":
            torch.cuda.synchronize()
        return len(tensors) / (time.perf_counter() - start)

    on_device()  # warm-up: nvJPEG's handles, CUDA's context
    print(f"{machine(torch.device(device))}; {len(raw)} JPEGs to {size} px")
    print(f"  Pillow, draft decode + resize, {os.cpu_count()} threads: {pillow:.1f} images/s")
    print(f"  decode_jpeg on {device}, batches of {batch_size}: {on_device():.1f} images/s")


@cli.command("input-size")
@click.option("--model", type=click.Path(path_type=Path), required=True)
@click.option("--size", type=int, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def input_size(model, size, out) -> None:
    """The same weights, fed SIZE x SIZE images: a model to time another input size with
    (the network's global pooling takes any size; its accuracy is not the point)."""
    from classifier.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(model)
    ckpt.image_size, ckpt.int8, ckpt.openvino_int8 = size, None, None
    ckpt.meta = {**ckpt.meta, "note": f"{model.name} at {size} px, for benchmarks"}
    print(f"{out}: version {save_checkpoint(ckpt, out)}")


@cli.command()
@click.option("--count", "counts", multiple=True, type=int, default=(10_000, 100_000))
@click.option("--database-url", default="", help="Default: a scratch SQLite file.")
@click.option("--broker", default="redis://127.0.0.1:6379/13", show_default=True)
def scale(counts, database_url, broker) -> None:
    """Producer (scan, hash, sniff, rows, publish) and export, each COUNT images: time per
    image and peak memory, each size in a fresh process."""
    print(f"{cpu_name()}, {os.cpu_count()} cores; database {database_url or 'SQLite'}")
    print("| images | producer ms/image | producer peak MiB | export ms/row | export peak MiB |")
    print("|---|---|---|---|---|")
    for n in counts:
        argv = [sys.executable, __file__, "scale-one", "--count", str(n), "--broker", broker]
        out = subprocess.run(
            argv + (["--database-url", database_url] if database_url else []),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.splitlines()[-1])
        print(
            f"| {n:,} | {1000 * r['producer_s'] / n:.3f} | {r['producer_mib']:.0f} | "
            f"{1000 * r['export_s'] / n:.3f} | {r['export_mib']:.0f} |",
            flush=True,
        )


@cli.command("scale-one", hidden=True)
@click.option("--count", type=int, required=True)
@click.option("--database-url", default="")
@click.option("--broker", required=True)
def scale_one(count, database_url, broker) -> None:
    import numpy as np
    import redis
    from PIL import Image
    from sqlalchemy import text

    home = Path(tempfile.mkdtemp(prefix="refund-sorter-bench-"))
    try:
        incoming = home / "incoming"
        for i in range(count):
            folder = incoming / f"{i // 1000:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.frombuffer(i.to_bytes(48, "little"), dtype=np.uint8).reshape(4, 4, 3)
            Image.fromarray(pixels).save(folder / f"return-{i:06d}.png")
        env = {
            "REFUND_SORTER_HOME": str(home),
            "REFUND_SORTER_MODEL_PATH": str(ROOT / "assets/model/refund-sorter-resnet18.pt"),
            "REFUND_SORTER_BROKER_URL": broker,
        }
        if database_url:
            env["REFUND_SORTER_DATABASE_URL"] = database_url
        os.environ.update(env)
        from models import ItemStatus
        from producer.sweep import run_sweep
        from refund_sorter.celery_app import publish
        from refund_sorter.config import get_settings
        from refund_sorter.db import session_factory, upgrade

        settings = get_settings()
        upgrade(settings.database_url)
        client = redis.Redis.from_url(broker)
        client.flushdb()
        before = peak_rss_mib()
        start = time.perf_counter()
        run = run_sweep(settings, dispatch=publish, trigger="manual").run
        producer_s = time.perf_counter() - start
        assert run.enqueued == count, run
        client.flushdb()
        # Classified rows to export: what workers would have written.
        with session_factory(settings.database_url).begin() as session:
            session.execute(
                text(
                    "UPDATE predictions SET status = :ok, main_category = 'footwear', "
                    "main_confidence = 0.9, sub_category = 'shoes', sub_confidence = 0.8, "
                    "final_path = original_path, classified_at = CURRENT_TIMESTAMP"
                ).bindparams(ok=ItemStatus.OK)
            )
        csv_path = home / "all.csv"
        # Linux counts a child's peak memory from the fork, so a child of this (by now large)
        # process would report this process's size: a small launcher forks the export.
        launcher = (
            "import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
        )
        export = [sys.executable, "-c", "from cli import main; main()", "export", "--out"]
        out = subprocess.run(
            [sys.executable, "-c", launcher, *export, str(csv_path)],
            cwd=ROOT,
            env={**os.environ, **env},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        export_s, export_mib = map(float, out.split())
        assert csv_path.read_text().count("\n") == count + 1
        print(
            json.dumps(
                {
                    "producer_s": producer_s,
                    "producer_mib": peak_rss_mib() - before,
                    "export_s": export_s,
                    "export_mib": export_mib,
                }
            )
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    cli()
