"""The training plan, torch-free: what ``refund-sorter train`` is asked and on which photos,
so the CLI reads its options and summarises a cross-validation without PyTorch.

- ``recipe``: every training setting and its default (``TrainConfig``).
- ``splits``: validation and calibration splits and cross-validation folds of a data folder,
  stratified by sub category.
- ``crossval``: one JSON result per cross-validation fold, and their summary.

``classifier.train`` carries the plan out with PyTorch.
"""
