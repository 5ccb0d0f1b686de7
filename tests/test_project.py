"""Project-level promises: the README's test command is what CI runs, the producer, beat,
migrations, the review desk and the metrics endpoint start without PyTorch, the packages
import each other only downwards, and no two modules import each other."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


SETUP = "bash tests/setup-machine.sh && "


def readme_commands() -> list[str]:
    pattern = rf"```bash\n((?:{re.escape(SETUP)})?python3 -m venv .*?)\n```"
    return re.findall(pattern, (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    demo, tests = readme_commands()[:2]
    assert "refund-sorter sweep --local" in demo
    assert tests.startswith(SETUP), "the command a newcomer types sets the machine up itself"
    # The model tests' second pass, as a CPU without AVX-512 computes (tests/avx2-pass.sh).
    assert tests.endswith(" && pytest && bash tests/avx2-pass.sh")
    ci_code = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ci_code == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', tests]


def test_producer_beat_migrations_the_review_desk_and_metrics_do_not_import_torch(tmp_path):
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
from classifier.checkpoint_taxonomy import read_taxonomy
read_taxonomy("assets/model/refund-sorter-resnet18.pt")   # the categories the desk offers
import monitoring.server   # the metrics endpoint, which versions the model file
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


def test_migrations_match_the_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from models import Base
    from refund_sorter.db import get_engine, upgrade

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    with get_engine(url).connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []


# What each package may not import, lazily inside a function or not: the producer and the
# workers share only the core's message contract, and the core imports no role above it.
# The review desk is a role of its own: it shares the core, reads the model's categories
# through classifier's torch-free modules, and no other package imports it but cli and the
# metrics endpoint (monitoring), which reads its backlog and accuracy queries. Only cli
# imports monitoring.
FORBIDDEN_IMPORTS = {
    "producer": {"worker", "cli", "review", "monitoring"},
    "worker": {"producer", "cli", "review", "monitoring"},
    "review": {"producer", "worker", "cli", "monitoring"},
    "monitoring": {"producer", "worker", "cli"},
    "refund_sorter": {"producer", "worker", "cli", "classifier", "review", "monitoring"},
    "models": {"producer", "worker", "cli", "classifier", "review", "monitoring"},
    "migrations": {"producer", "worker", "cli", "classifier", "review", "monitoring"},
    "classifier": {"producer", "worker", "cli", "review", "monitoring"},
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
