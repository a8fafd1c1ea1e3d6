#!/usr/bin/env bash
# Set up Triton's perf_analyzer on this machine and run it against a running mlops-serve.
#
#   benchmarks/tools/perf_analyzer.sh setup            # once: tools venv + libraries
#   benchmarks/tools/perf_analyzer.sh run [ARGS...]     # perf_analyzer with defaults below + ARGS
#
# Why this recipe (see shared/reference/API-NOTES.md): `pip install perf-analyzer` installs only a
# placeholder, and the binaries of tritonclient >= 2.53 need glibc 2.38 (Debian 12 has 2.36).
# tritonclient[all]==2.45.0 ships a perf_analyzer built for older glibc; it needs apt's libb64-0d
# and the CUDA runtime library (pip's nvidia-cuda-runtime-cu12) on LD_LIBRARY_PATH even on a CPU-only
# machine. The tools venv is kept apart from the project's venv: tritonclient 2.45 pins older grpcio
# and protobuf than the project uses.
#
# Environment: PERF_VENV (default .tools-venv in the repository, git-ignored), PYTHON (default python3),
# MLOPS_SERVE_URL (default 127.0.0.1:8001), MLOPS_MODEL_NAME (default flight_delay),
# MLOPS_SERVE_TOKEN (sent as a bearer token when set).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PERF_VENV="${PERF_VENV:-$ROOT/.tools-venv}"
PYTHON="${PYTHON:-python3}"

cuda_lib_dir() {
  "$PERF_VENV/bin/python" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("nvidia.cuda_runtime")
print(os.path.join(list(spec.submodule_search_locations)[0], "lib"))
EOF
}

setup() {
  if ! dpkg -s libb64-0d >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq libb64-0d
    else
      echo "install libb64-0d first (sudo apt-get install libb64-0d)" >&2
      exit 1
    fi
  fi
  if [ ! -x "$PERF_VENV/bin/perf_analyzer" ]; then
    "$PYTHON" -m venv "$PERF_VENV"
    "$PERF_VENV/bin/pip" install -q -c "$ROOT/benchmarks/tools/perf_analyzer-constraints.txt" \
      "tritonclient[all]==2.45.0" nvidia-cuda-runtime-cu12
  fi
  LD_LIBRARY_PATH="$(cuda_lib_dir):${LD_LIBRARY_PATH:-}" "$PERF_VENV/bin/perf_analyzer" --version >/dev/null 2>&1 \
    || LD_LIBRARY_PATH="$(cuda_lib_dir):${LD_LIBRARY_PATH:-}" "$PERF_VENV/bin/perf_analyzer" --help >/dev/null
  echo "perf_analyzer ready in $PERF_VENV"
}

run() {
  [ -x "$PERF_VENV/bin/perf_analyzer" ] || setup
  local auth=()
  if [ -n "${MLOPS_SERVE_TOKEN:-}" ]; then
    auth=(-H "authorization:Bearer ${MLOPS_SERVE_TOKEN}")
  fi
  # --concurrency-range 1:16:4 would measure 1,5,9,13 (never 16): list the end point explicitly
  # with separate runs, or use 1:16:15 for exactly 1 and 16. -s 100 keeps noisy windows stable.
  LD_LIBRARY_PATH="$(cuda_lib_dir):${LD_LIBRARY_PATH:-}" exec "$PERF_VENV/bin/perf_analyzer" \
    -m "${MLOPS_MODEL_NAME:-flight_delay}" -u "${MLOPS_SERVE_URL:-127.0.0.1:8001}" -i grpc \
    "${auth[@]}" "$@"
}

case "${1:-}" in
  setup) setup ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 setup | run [perf_analyzer args...]" >&2; exit 2 ;;
esac
