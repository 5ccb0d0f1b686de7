"""The model registry, torch-free: the producer, the workers, the review desk and the CLI
use it without loading a model.

- ``registry``: which model serves, each version's file in the model store, and how the
  serving model changes (register, promote through the gate, roll back).
- ``gate``: the promotion gate: the paired tallies of the candidate and the serving model on
  the photos people labelled, the difference of their accuracies with its upper bound, and
  the decision ``promote`` runs.
- ``version``: a model's version, from its file's bytes, and whether a task is for it.
- ``checkpoint_taxonomy``: a checkpoint's categories and figures, read without PyTorch.

Rows are written by ``refund_sorter.crud``; the model itself (PyTorch) is ``classifier``'s.
"""
