# Two images from one file:
#   base   - producer, beat, Flower, migrations: no PyTorch, starts in a second
#   worker - base + PyTorch and the shipped model, classifies batches
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY refund_sorter ./refund_sorter
COPY cli ./cli
COPY classifier ./classifier
COPY worker ./worker
COPY producer ./producer
COPY models ./models
COPY migrations ./migrations
RUN pip install -c constraints.txt .
RUN useradd --create-home sorter && mkdir -p /data && chown sorter /data
USER sorter

FROM base AS worker
USER root
# CPU wheels by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# for a CUDA image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install -c constraints.txt --extra-index-url "${TORCH_INDEX}" ".[ml]"
COPY assets/model ./assets/model
USER sorter
