# syntax=docker/dockerfile:1
# gloro-serve, CPU serving image: onnxruntime only, no torch, no compilers.
#
#   docker build -t gloro-serve .
#   docker run --rm -p 8000:8000 gloro-serve                       # the shipped MNIST model
#   docker run --rm -p 8000:8000 -v "$PWD/repo:/models:ro" \
#       -e GLORO_REPOSITORY=/models gloro-serve                    # your own model repository
#
# Every server flag is also an environment variable GLORO_<FLAG> (docs/deploy.md).
# BASE_IMAGE may be any Debian-like image with Python >= 3.10 that has `python3 -m venv`
# (python:3.11-slim, or the local stand-in made by shared/tools/make-base-image.sh).
ARG BASE_IMAGE=python:3.11-slim

# ---- builder: resolve and install the package and its wheels into a venv ----------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY models ./models
# The core install only (no [train] extra): onnxruntime, FastAPI, uvicorn, Pillow, numpy.
# pip and setuptools are removed from the venv: nothing installs at run time.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /src \
    && /opt/venv/bin/pip uninstall --yes setuptools pip \
    && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then \
         echo "torch must not be in the serving image" >&2; exit 1; \
       fi

# ---- runtime: the base plus the venv, as a non-root user --------------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="gloro-serve" \
      org.opencontainers.image.description="Certified (GloRo) image classification server, CPU, onnxruntime" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 gloro \
    && useradd --system --no-log-init --uid 10001 --gid gloro --home-dir /nonexistent \
         --shell /usr/sbin/nologin gloro \
    && mkdir -p /models
COPY --from=builder /opt/venv /opt/venv
# GLORO_REPOSITORY is unset: the model repository shipped inside the package is served.
# Mount your own at /models and set GLORO_REPOSITORY=/models to serve it instead.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GLORO_HOST=0.0.0.0 \
    GLORO_PORT=8000 \
    GLORO_GRPC_PORT=8081
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8081
# The slim base has no curl: probe /healthz with the venv's Python.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GLORO_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["gloro-serve"]
CMD ["serve"]
