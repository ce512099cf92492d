#!/usr/bin/env bash
# Installs NVIDIA's perf_analyzer, Triton's load generator, to benchmark gloro-serve over the Open
# Inference Protocol (docs/benchmarks.md, "perf_analyzer"). The binary ships in tritonclient's
# Linux wheels up to 2.41 (later ones leave it out); it links libb64 (Debian) and the CUDA runtime
# library (NVIDIA's PyPI wheel; it needs no GPU to run against an HTTP server).
#
#   bash bench/install_perf_analyzer.sh            # /opt/perf_analyzer, command in /usr/local/bin
#   PREFIX=$HOME/.local/perf_analyzer BIN_DIR=$HOME/.local/bin bash bench/install_perf_analyzer.sh
set -euo pipefail

PREFIX=${PREFIX:-/opt/perf_analyzer}
BIN_DIR=${BIN_DIR:-/usr/local/bin}
PIP=${PIP:-pip}
PYTHON=${PYTHON:-python3}

if ! ldconfig -p | grep 'libb64\.so\.0d' >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install_perf_analyzer: libb64 is missing; run: apt-get install libb64-0d" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Exact files, checked against these hashes: nothing else is installed.
cat >"$work/requirements.txt" <<'REQS'
tritonclient==2.41.0 --hash=sha256:cf4ed5df836fa99937678a9fd852f86ba05c7b83656dd0a540e20afdb9ab4629
nvidia-cuda-runtime-cu12==12.9.79 --hash=sha256:25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3
REQS
"$PIP" download --quiet --no-deps --require-hashes --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --python-version 3.11 \
  -r "$work/requirements.txt" -d "$work/wheels"

mkdir -p "$PREFIX/bin" "$PREFIX/lib" "$BIN_DIR"
"$PYTHON" - "$work/wheels" "$PREFIX" <<'PY'
import sys
import zipfile
from pathlib import Path

wheels, prefix = Path(sys.argv[1]), Path(sys.argv[2])
wanted = {"perf_analyzer": prefix / "bin" / "perf_analyzer", "libcudart.so.12": prefix / "lib" / "libcudart.so.12"}
for wheel in wheels.glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            target = wanted.get(member.rsplit("/", 1)[-1])
            if target is not None:
                target.write_bytes(archive.read(member))
                target.chmod(0o755)
missing = [str(t) for t in wanted.values() if not t.is_file()]
if missing:
    sys.exit(f"install_perf_analyzer: not found in the wheels: {', '.join(missing)}")
PY

cat >"$BIN_DIR/perf_analyzer" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$PREFIX/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$PREFIX/bin/perf_analyzer" "\$@"
WRAP
chmod 755 "$BIN_DIR/perf_analyzer"
"$BIN_DIR/perf_analyzer" --version >/dev/null 2>&1 || { echo "install_perf_analyzer: $BIN_DIR/perf_analyzer does not run" >&2; exit 1; }
echo "perf_analyzer installed: $BIN_DIR/perf_analyzer"
