"""The ``refund-sorter`` command line, by audience: ``cli.model`` for whoever trains and
checks the model (train, cv-summary, evaluate, classify), ``cli.operations`` for the
operators (sweep, runs, export, db upgrade, flower).

It sits above the roles it drives (producer, worker, classifier), so the shared core in
``refund_sorter/`` imports none of them. Heavy imports (PyTorch, Celery) happen inside the
commands that need them, so ``refund-sorter --help``, ``db`` and ``export`` start at once.
"""

import click

from cli import model, operations


@click.group()
@click.version_option(package_name="refund-sorter")
def main() -> None:
    """Sort photos of returned clothing into main and sub categories."""


for command in (
    model.train,
    model.cv_summary,
    model.evaluate,
    model.classify,
    operations.sweep,
    operations.runs,
    operations.export,
    operations.db,
    operations.flower,
):
    main.add_command(command)
