#!/usr/bin/env bash
# Set up aiida-mlpes on this machine and run the NH3 demo.
#
#   bash scripts/setup.sh            # install everything, create the profile and codes, run the demo
#   bash scripts/setup.sh --no-demo  # the same without the demo (used by scripts/test.sh)
#
# Idempotent: a second run reuses the venv, the profile, the computer and the codes.
# Environment: PYTHON (default python3), VENV (default ./.venv), AIIDA_PATH (default ./.aiida, keeps the
# project's profile away from ~/.aiida), MLPES_PROFILE (default mlpes), MLPES_TORCH (default torch==2.13.0,
# the CPU wheel; GPU users install their own torch first and set MLPES_TORCH=skip), MLPES_DEMO_ARGS (e.g.
# --fast for the smaller demo that CI runs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
export AIIDA_PATH="${AIIDA_PATH:-$ROOT/.aiida}"
PROFILE="${MLPES_PROFILE:-mlpes}"
TORCH_REQ="${MLPES_TORCH:-torch==2.13.0}"
RUN_DEMO=1
for arg in "$@"; do
  case "$arg" in
    --no-demo) RUN_DEMO=0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }

step "System packages (xtb)"
if ! command -v xtb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq xtb
fi
echo "xtb: $(command -v xtb)"

step "Python environment in $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if [ "$TORCH_REQ" != "skip" ]; then "${PIP[@]}" install "$TORCH_REQ"; fi
fi
"${PIP[@]}" install -e "$ROOT[xtb,pyscf,d3,openmm,dev,docs]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import aiida_mlpes, torch, aiida; print('aiida-mlpes', aiida_mlpes.__version__, '| torch', torch.__version__, '| aiida-core', aiida.__version__)"

step "AiiDA profile '$PROFILE', computer and codes (AIIDA_PATH=$AIIDA_PATH)"
"$VENV/bin/aiida-mlpes" setup --profile "$PROFILE"

if [ "$RUN_DEMO" -eq 1 ]; then
  step "NH3 demo"
  # MLPES_DEMO_ARGS=--fast runs a smaller demo (CI)
  PATH="$VENV/bin:$PATH" "$VENV/bin/verdi" -p "$PROFILE" run "$ROOT/workflows/nh3_demo.py" ${MLPES_DEMO_ARGS:-}
fi

cat <<MSG

Done. To use this profile in a shell:
  source $VENV/bin/activate && export AIIDA_PATH=$AIIDA_PATH && verdi profile show $PROFILE
MSG
