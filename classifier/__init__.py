"""The dual-head clothing classifier. One concern per module:

- ``recipe``: the training settings and their defaults (``TrainConfig``). Torch-free.
- ``splits``: validation and calibration splits and cross-validation folds of a data
  folder, stratified by sub category. Torch-free.
- ``crossval``: one JSON result per cross-validation fold, and their summary. Torch-free.
- ``taxonomy``: the category tree read from a data folder, and relabelling one folder's
  images onto another tree (``relabel``). Torch-free.
- ``version``: a model's version, from its file's bytes. Torch-free.
- ``network``: the ResNet18 with a main and a sub head, and backbone initialisation.
- ``checkpoint``: the model file: what it holds, safe loading, atomic saving.
- ``presets``: train and eval preprocessing (the eval one is what the workers use), and
  the batch mixing (MixUp, CutMix) training may add.
- ``data``: decoding labelled images into memory, skipping unreadable files.
- ``predict``: the one forward pass and joint decision (``forward_decide``), and
  ``Classifier``, a loaded model with the review threshold in force that returns a
  ``Classification`` per image, saying whether it needs review.
- ``int8``: running a model in int8 on a CPU from its checkpoint's calibration
  (``int8_network``), and whether ``auto`` precision may pick it (``passes``).
- ``quantize``: making that calibration (``calibrate``) and a model file that carries it
  (``add_int8``, behind ``refund-sorter quantize`` and ``train --int8``).
- ``train``: the training loop (``train``, ``train_one_epoch``), validation, and the
  calibration of the saved model (``calibrate``).
- ``calibration``: temperature scaling, the expected calibration error, and the review
  threshold that reaches a target accuracy.
- ``evaluate``: the evaluation report, its confusion matrices, reliability diagram and
  coverage against accuracy.

Only the torch-free modules may be imported at startup by code that must start without
PyTorch (the producer, Celery beat, migrations, the CLI); import the others lazily.
"""
