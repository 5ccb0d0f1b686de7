# Two images from one file:
#   base   - producer, beat, Flower, migrations, the review desk, the metrics endpoint, the
#            returns counter's API: no PyTorch, starts in a second
#   worker - base + PyTorch and OpenVINO, classifies batches with the shipped model
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
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
RUN pip install -c constraints.txt .
# The producer and the metrics endpoint version the model file and the review desk reads
# its categories; none needs PyTorch to do so.
COPY assets/model ./assets/model
# /models: the model store's volume, which takes the folder's owner when first created.
RUN useradd --create-home sorter && mkdir -p /data /models && chown sorter /data /models
USER sorter

FROM base AS worker
USER root
# CPU wheels by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# for a CUDA image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install -c constraints.txt --extra-index-url "${TORCH_INDEX}" ".[ml,openvino]"
USER sorter
