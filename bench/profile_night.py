"""Where a distributed night's time goes, run by hand (never in CI):

    python bench/profile_night.py --model MODEL --data DIR --postgres URL [--limit 1800]

Sweeps the photos through Redis, one default ``celery -A worker worker`` and PostgreSQL as
``throughput.py table`` does (a fresh folder, database and worker each night, ``--repeat``
nights), but starts the worker with timers around each step of a batch: every pool process
writes, for each batch, the wall and CPU seconds of each step (admit's queries, read and
decode, the forward pass, the record transaction, the moves, the filing transaction, the
CSV, the candidate query, the shadow run, the Flower events) and of the Celery time between
its batches. It prints per-photo and per-batch costs (medians over the nights), their share
of the pool processes' time over the night, and the night's fixed costs (scan, publish,
first and last batch, the tail). With ``--cprofile-batch N`` each pool process also runs
its Nth batch under cProfile, and the functions taking most of it are printed.
"""

import cProfile
import functools
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE))
from throughput import Home, celery_sweep, cpu_name  # noqa: E402

# ---------------------------------------------------------------------- in the worker

_steps: dict[str, list[float]] = {}  # this batch's step -> [wall s, CPU s]
_lock = threading.Lock()
_batch: dict = {}  # the batch being timed, written out by the Flower report that ends it
_count = [0]


def _add(label: str, wall: float, cpu: float) -> None:
    with _lock:
        step = _steps.setdefault(label, [0.0, 0.0])
        step[0] += wall
        step[1] += cpu


def _time(module, name: str, label: str, clock=time.process_time) -> None:
    """Wrap ``module.name`` (looked up there at each call) with a timer adding to ``label``:
    wall seconds and ``clock`` seconds (the process's CPU; a thread's own for the steps
    that run on decoding threads, whose wall times overlap)."""
    fn = getattr(module, name)

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        wall, cpu = time.perf_counter(), clock()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(label, time.perf_counter() - wall, clock() - cpu)

    setattr(module, name, timed)


def install_timers(out: Path) -> None:
    """Timers around each step of ``process_batch`` and of the classify task, writing one
    JSON line per batch to ``out/PID.jsonl``."""
    import refund_sorter.crud
    import refund_sorter.filing
    import worker.pipeline as pipeline
    import worker.tasks as tasks
    from refund_sorter.files import Folders

    thread = time.thread_time
    for name, label in [
        ("queued_paths", "admit: queued-paths query"),
        ("review_threshold_in_force", "admit: review-threshold query"),
        ("admit", "admit"),
        ("prepare", "prepare (read, hash, decode)"),
        ("predict", "forward pass"),
        ("is_audited", "record: audit draw"),
        ("record_results", "record: record_results statements"),
        ("record", "record (the transaction)"),
        ("file", "file (moves, filing transaction, CSV)"),
        ("registered_candidate", "reads: candidate query"),
        ("shadow", "shadow"),
    ]:
        _time(pipeline, name, label)
    _time(Folders, "processed_destination", "record: destinations")
    _time(pipeline, "_prepare_one", "prepare: per photo, core", thread)
    _time(pipeline, "sha256_bytes", "prepare: hash, core", thread)
    _time(pipeline, "open_rgb", "prepare: JPEG decode, core", thread)
    _time(refund_sorter.filing, "move_files", "file: moves")
    _time(refund_sorter.filing, "export_sweeps", "file: CSV")
    _time(refund_sorter.crud, "record_filed", "file: record_filed statements")
    cprofile_batch = int(os.environ.get("BENCH_CPROFILE_BATCH", "0"))

    read_task, process_batch, report = tasks.read_task, tasks.process_batch, tasks.report_to_flower

    def reading(args):
        if not _batch:  # the classify task's first step
            _batch.update(classify_start=time.perf_counter(), classify_cpu0=time.process_time())
        return read_task(args)

    def processing(items, clf, settings, state=None):
        _count[0] += 1
        _steps.clear()
        _batch.update(n=len(items), batch=_count[0], start=time.perf_counter())
        _batch["cpu0"] = time.process_time()
        if _count[0] == cprofile_batch:
            profiler = cProfile.Profile()
            try:
                return profiler.runcall(process_batch, items, clf, settings, state)
            finally:
                profiler.dump_stats(out / f"{os.getpid()}.prof")
                _batch.update(end=time.perf_counter(), cpu1=time.process_time())
        try:
            return process_batch(items, clf, settings, state)
        finally:
            _batch.update(end=time.perf_counter(), cpu1=time.process_time())

    def reporting(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return report(*args, **kwargs)
        finally:
            _add("Flower events", time.perf_counter() - wall, time.process_time() - cpu)
            line = {
                **_batch,
                "pid": os.getpid(),
                "classify_end": time.perf_counter(),
                "classify_cpu1": time.process_time(),
                "steps": dict(_steps),
            }
            _batch.clear()
            with open(out / f"{os.getpid()}.jsonl", "a") as fh:
                fh.write(json.dumps(line) + "\n")

    tasks.read_task, tasks.process_batch, tasks.report_to_flower = reading, processing, reporting


# ----------------------------------------------------------------------- the analysis

# Steps that hold others: what is left of each once its parts are taken out.
PARTS = {
    "admit": ["admit: queued-paths query", "admit: review-threshold query"],
    "record (the transaction)": [
        "record: audit draw",
        "record: destinations",
        "record: record_results statements",
    ],
    "file (moves, filing transaction, CSV)": [
        "file: moves",
        "file: record_filed statements",
        "file: CSV",
    ],
}
REST = {
    "admit": "admit: sessions, checks",
    "record (the transaction)": "record: session, commit, results built",
    "file (moves, filing transaction, CSV)": "file: session, commit",
}


def night_profile(run: dict, batches: list[dict], processes: int) -> dict:
    """Per step: wall s and CPU s summed over the night's batches; plus the Celery time in
    the pool processes and the night's fixed costs."""
    batches = [b for b in batches if b["start"] >= run["first_published_at"]]
    photos = sum(b["n"] for b in batches)
    steps: dict[str, list[float]] = {}
    for b in batches:
        for label, (wall, cpu) in b["steps"].items():
            s = steps.setdefault(label, [0.0, 0.0])
            s[0] += wall
            s[1] += cpu
    for whole, parts in PARTS.items():
        if whole in steps:
            steps[REST[whole]] = [
                steps[whole][i] - sum(steps.get(p, [0, 0])[i] for p in parts) for i in (0, 1)
            ]
    # The classify task's own time around process_batch, and Celery's between batches.
    around = [0.0, 0.0]
    between = [0.0, 0.0]
    for b in batches:
        around[0] += (b["classify_end"] - b["classify_start"]) - (b["end"] - b["start"])
        around[1] += (b["classify_cpu1"] - b["classify_cpu0"]) - (b["cpu1"] - b["cpu0"])
    steps["classify task around process_batch (read, group, log)"] = [
        around[0] - steps["Flower events"][0],
        around[1] - steps["Flower events"][1],
    ]
    idle_first, idle_last = 0.0, 0.0
    for pid in {b["pid"] for b in batches}:
        own = sorted((b for b in batches if b["pid"] == pid), key=lambda b: b["start"])
        for a, b in pairwise(own):
            between[0] += b["classify_start"] - a["classify_end"]
            between[1] += b["classify_cpu0"] - a["classify_cpu1"]
        idle_first += own[0]["classify_start"] - run["first_published_at"]
        idle_last += run["done_at"] - own[-1]["classify_end"]
    steps["pool process between batches (Celery hand-over, waiting)"] = between
    steps["pool process before its first batch"] = [idle_first, 0.0]
    steps["pool process after its last batch"] = [idle_last, 0.0]
    first = min(batches, key=lambda b: b["start"])
    last = max(batches, key=lambda b: b["start"])
    night = run["done_at"] - run["first_published_at"]
    return {
        "photos": photos,
        "batches": len(batches),
        "night_s": night,
        "images_per_second": photos / night,
        "pool_seconds": processes * night,
        "steps": steps,
        "main_process_core_s": run["main_process_core_seconds"],
        "fixed": {
            "scan and rows, before the first publish (s)": run["first_published_at"]
            - run["scan_started_at"],
            "publish, first to last task (s)": run["last_published_at"] - run["first_published_at"],
            "first publish to the first batch's start (s)": first["classify_start"]
            - run["first_published_at"],
            "first batch (s)": first["classify_end"] - first["classify_start"],
            "median batch (s)": statistics.median(
                b["classify_end"] - b["classify_start"] for b in batches
            ),
            f"last batch, {last['n']} photos (s)": last["classify_end"] - last["classify_start"],
            "last publish to the last batch's start (s)": last["classify_start"]
            - run["last_published_at"],
            # Negative: seen finished (its filing) before the last batch's shadow check and
            # Flower report ended.
            "the last batch's end to the night seen finished (s)": run["done_at"]
            - max(b["classify_end"] for b in batches),
            "worker start to both models loaded (s)": run["worker_ready_seconds"],
        },
    }


def print_report(nights: list[dict], processes: int) -> None:
    med = statistics.median
    photos = nights[0]["photos"]
    batches = med(n["batches"] for n in nights)
    seen = list(dict.fromkeys(label for n in nights for label in n["steps"]))
    # Each step with its parts after it; the rest as they came.
    labels = []
    for label in seen:
        parts = [p for w, ps in PARTS.items() for p in [*ps, REST[w]]]
        if label in labels or label in parts or label.startswith("prepare:"):
            continue
        labels.append(label)
        if label == "prepare (read, hash, decode)":
            labels += [x for x in seen if x.startswith("prepare:")]
        labels += [x for x in [*PARTS.get(label, []), REST.get(label)] if x in seen]
    rows = []
    for label in labels:
        wall = med(n["steps"].get(label, [0, 0])[0] / n["photos"] for n in nights)
        cpu = med(n["steps"].get(label, [0, 0])[1] / n["photos"] for n in nights)
        share = med(n["steps"].get(label, [0, 0])[0] / n["pool_seconds"] for n in nights)
        rows.append((label, wall, cpu, share))
    print(
        f"\n{cpu_name()}, {os.cpu_count()} cores; {photos} photos in {batches:.0f} batches; "
        f"{len(nights)} nights, medians; {processes} pool processes"
    )
    print("nights: " + ", ".join(f"{n['images_per_second']:.1f}" for n in nights) + " images/s")
    print(
        "\n| step (a part: after its step, its name prefixed) | wall ms per photo | "
        "core-ms per photo | wall ms per batch | share of the pool processes' night |"
    )
    print("|---|---|---|---|---|")
    per_batch = photos / batches
    for label, wall, cpu, share in rows:
        if label.endswith(", core"):  # on the decoding threads: their wall times overlap
            print(f"| {label} | | {cpu * 1000:.3f} | | |")
            continue
        print(
            f"| {label} | {wall * 1000:.3f} | {cpu * 1000:.3f} | {wall * 1000 * per_batch:.2f} | "
            f"{share:.1%} |"
        )
    main = med(n["main_process_core_s"] / n["photos"] for n in nights)
    print(f"| Celery main process (its own core) | | {main * 1000:.3f} | | |")
    print("\n| the night's fixed costs | median | each night |")
    print("|---|---|---|")
    for key in nights[0]["fixed"]:
        each = [n["fixed"].get(key) for n in nights]
        each = [e for e in each if e is not None]
        if each:
            shown = ", ".join(f"{e:.3f}" for e in each)
            print(f"| {key} | {med(each):.3f} | {shown} |")


def print_cprofile(out: Path, top: int) -> None:
    files = [str(p) for p in out.glob("*.prof")]
    if not files:
        return
    stats = pstats.Stats(*files)
    print(f"\ncProfile of one batch in each pool process ({len(files)}), by own time:")
    stats.sort_stats("tottime").print_stats(top)


@click.group(invoke_without_command=True, context_settings={"ignore_unknown_options": True})
@click.option("--model", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path))
@click.option("--limit", default=1800, show_default=True, help="Photos per night.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--repeat", default=3, show_default=True, help="Nights; the table has medians.")
@click.option("--processes", default=0, show_default=True, help="-c; 0: the worker's default.")
@click.option("--broker", default="redis://127.0.0.1:6379/14", show_default=True)
@click.option(
    "--postgres",
    default="",
    help="As for throughput.py table: each night gets a scratch database on that server.",
)
@click.option("--cprofile-batch", default=0, help="Run each process's Nth batch under cProfile.")
@click.option("--top", default=25, show_default=True, help="cProfile lines to print.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write them.")
@click.pass_context
def cli(
    ctx,
    model,
    data,
    limit,
    batch_size,
    repeat,
    processes,
    broker,
    postgres,
    cprofile_batch,
    top,
    json_path,
) -> None:
    """Profile a distributed night: see the module's docstring."""
    if ctx.invoked_subcommand:
        return
    if model is None or data is None:
        raise click.UsageError("--model and --data are needed")
    os.environ["REFUND_SORTER_BROKER_URL"] = broker
    pool = processes or os.cpu_count()
    nights = []
    prof = Path(tempfile.mkdtemp(prefix="refund-sorter-bench-profile-"))
    try:
        for i in range(repeat):
            out = prof / str(i)
            out.mkdir()
            home = Home(data, limit, model, broker, batch_size, "cpu", postgres)
            home.env["BENCH_PROFILE_DIR"] = str(out)
            if cprofile_batch:
                home.env["BENCH_CPROFILE_BATCH"] = str(cprofile_batch)
            try:
                run = celery_sweep(
                    home,
                    processes,
                    celery=(sys.executable, str(Path(__file__).resolve()), "celery"),
                )
            finally:
                home.remove()
            batches = [
                json.loads(line) for f in out.glob("*.jsonl") for line in f.read_text().splitlines()
            ]
            nights.append(night_profile(run, batches, pool))
            print(
                f"  night {i + 1}: {nights[-1]['images_per_second']:.1f} images/s, "
                f"{nights[-1]['batches']} batches",
                flush=True,
            )
        print_report(nights, pool)
        if cprofile_batch:
            print_cprofile(prof / "0", top)
    finally:
        shutil.rmtree(prof, ignore_errors=True)
    if json_path:
        report = {"machine": cpu_name(), "cores": os.cpu_count(), "nights": nights}
        Path(json_path).write_text(json.dumps(report, indent=2))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def celery(ctx) -> None:
    """Celery's command line (``celery ARGS``) with the timers in place, writing to
    $BENCH_PROFILE_DIR: what each night starts."""
    from celery.__main__ import main

    os.chdir(Path(__file__).resolve().parent.parent)
    install_timers(Path(os.environ["BENCH_PROFILE_DIR"]))
    sys.argv = ["celery", *ctx.args]
    main()


if __name__ == "__main__":
    cli()
