"""The dual-head clothing classifier: taxonomy, network, checkpoints, training, evaluation.

Only ``classifier.taxonomy`` is torch-free; import the other modules lazily from code that
must start without PyTorch (the producer, Celery beat, migrations).
"""
