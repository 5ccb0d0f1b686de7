"""The ``refund-sorter`` command line, by audience: ``cli.model`` for whoever trains and
checks the model (train, cv-summary, evaluate, quantize, classify), ``cli.registry`` for
whoever decides which model serves (model list, register, promote, rollback), with
``cli.comparison`` (model compare, and the gate in front of promote), ``cli.operations``
for the operators (sweep, runs, export, db upgrade, flower, metrics-server),
``cli.review_desk`` for the review desk (review-server, export-training-set, accuracy,
threshold, report), ``cli.api`` for the returns counter (api-server, api-token).

It sits above the roles it drives (producer, worker, classifier), so the shared core in
``refund_sorter/`` imports none of them. Heavy imports (PyTorch, Celery) happen inside the
commands that need them, so ``refund-sorter --help``, ``db`` and ``export`` start at once.
"""

import click

from cli import api, comparison, model, operations, registry, review_desk


@click.group()
@click.version_option(package_name="refund-sorter")
def main() -> None:
    """Sort photos of returned clothing into main and sub categories."""


for command in (
    model.train,
    model.cv_summary,
    model.evaluate,
    model.quantize,
    model.classify,
    registry.model_group,
    operations.sweep,
    operations.runs,
    operations.export,
    operations.db,
    operations.flower,
    operations.metrics_server,
    review_desk.review_server,
    review_desk.export_training_set,
    review_desk.accuracy,
    review_desk.threshold,
    review_desk.report,
    api.api_server,
    api.api_token,
):
    main.add_command(command)
registry.model_group.add_command(comparison.compare)
