# Two images from one file:
#   base   - producer, beat, Flower, migrations, the review desk, the metrics endpoint, the
#            returns counter's API: no PyTorch, starts in a second
#   worker - base + PyTorch and OpenVINO, classifies batches with the shipped model
# The base image is a build argument: the public python:3.11-slim by default, or any image
# with Python 3.11, its venv module and useradd (deploy/containers/stack.sh makes one from
# Debian's packages). The project's Python packages go into a virtual environment, /opt/venv,
# from the package index, or from the wheels in wheelhouse/ when it holds any (built with
# `pip wheel`, docs/deployment.md): no network is needed then.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY refund_sorter ./refund_sorter
COPY cli ./cli
COPY registry ./registry
COPY training ./training
COPY classifier ./classifier
COPY worker ./worker
COPY producer ./producer
COPY review ./review
COPY monitoring ./monitoring
COPY api ./api
COPY models ./models
COPY migrations ./migrations
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheelhouse; fi; \
    pip install "$@" -c constraints.txt .
# The producer and the metrics endpoint version the model file and the review desk reads
# its categories; none needs PyTorch to do so.
COPY assets/model ./assets/model
# /data and /models: the volumes, which take the folders' owner when first created.
RUN useradd --create-home sorter && mkdir -p /data /models && chown sorter /data /models
USER sorter

FROM base AS worker
USER root
# Without a wheelhouse: CPU wheels by default; build with
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 for a CUDA image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheelhouse; \
    else set -- --extra-index-url "${TORCH_INDEX}"; fi; \
    pip install "$@" -c constraints.txt ".[ml,openvino]"
USER sorter
