# syntax=docker/dockerfile:1.7
# One image, two commands:
#   default                     the Dagster code server for the code location `mlops_assets` (gRPC :4000)
#   mlops-serve                 the Open Inference Protocol server, Triton's ports (REST :8000, gRPC :8001,
#                               /health /ready /metrics :8002)
# The same image also runs `dagster-webserver` and `dagster-daemon run` (see deploy/ and README).
# tests/deploy/test_dockerfile.py runs this file's commands in a clean venv, since no Docker engine runs in CI.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtual environment from the lock file -----------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# torch==2.13.0 on PyPI is the CUDA build for Linux (several GB of NVIDIA libraries this CPU service never
# loads). PyTorch's CPU index serves the same release as 2.13.0+cpu, which satisfies the lock's ==2.13.0,
# so it is installed first, alone, from that index; everything else then comes from PyPI through the lock.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH="$VIRTUAL_ENV/bin:$PATH"

COPY constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps --index-url "$TORCH_INDEX_URL" -c constraints.txt torch==2.13.0

# Only what the package needs: the build context is also trimmed by .dockerignore.
COPY pyproject.toml README.md ./
COPY mlops_assets ./mlops_assets
COPY resources ./resources
COPY sensors ./sensors
COPY serving ./serving
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt ".[prod]" \
    && pip check

# ---- runtime: the venv, the instance config, a non-root user -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# The commit the image was built from, recorded on every MLflow run (mlops_assets/lineage.py).
ARG GIT_COMMIT=unknown
ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GIT_COMMIT=${GIT_COMMIT} \
    MLOPS_ENV=prod \
    MLOPS_HOME=/var/lib/mlops \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    DAGSTER_GRPC_PORT=4000 \
    MLOPS_SERVE_HTTP_PORT=8000 \
    MLOPS_SERVE_PORT=8001 \
    MLOPS_SERVE_METRICS_PORT=8002 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

RUN groupadd --system --gid 10001 mlops \
    && useradd --system --uid 10001 --gid mlops --home-dir /var/lib/mlops --no-create-home mlops \
    && mkdir -p /var/lib/mlops /opt/dagster/dagster_home \
    && chown mlops:mlops /var/lib/mlops

COPY --from=builder /opt/venv /opt/venv
# ECS reads the instance from the image; on Kubernetes a ConfigMap mounted over $DAGSTER_HOME replaces it.
COPY deploy/ecs/dagster.yaml deploy/ecs/workspace.yaml /opt/dagster/dagster_home/
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/mlops-healthcheck

USER 10001:10001
WORKDIR /var/lib/mlops
EXPOSE 4000 8000 8001 8002

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["mlops-healthcheck"]

CMD ["dagster", "code-server", "start", "--host", "0.0.0.0", "--port", "4000", \
     "--module-name", "mlops_assets.definitions", "--location-name", "mlops_assets"]
