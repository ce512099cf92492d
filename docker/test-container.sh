#!/usr/bin/env bash
# Builds the serving image from ./Dockerfile with buildah and tests it running
# (tests/deploy/test_container_image.py). Meant as its own step of .ci/run, after the Python
# dev install:   bash docker/test-container.sh
# Needs root. Installs buildah and debootstrap (Debian packages) when missing; the base image
# comes from ../shared/tools/make-base-image.sh. Takes about 4 minutes the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null
fi
exec python -m pytest -m container tests/deploy "$@"
