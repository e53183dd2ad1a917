#!/usr/bin/env bash
# Run the checks and the test suite: ruff (lint + format), mypy on aiida_mlpes/core, pytest with coverage.
# Sets up the environment first if it is missing (scripts/setup.sh --no-demo). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` or `bash scripts/test.sh tests/core`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
cd "$ROOT"
if [ ! -x "$VENV/bin/pytest" ] || ! "$VENV/bin/python" -c "import aiida_mlpes" >/dev/null 2>&1 || ! command -v xtb >/dev/null; then
  bash "$ROOT/scripts/setup.sh" --no-demo
fi
echo "==> ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "==> mypy aiida_mlpes/core"
"$VENV/bin/mypy" --config-file setup.cfg
echo "==> pytest"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/pytest" -n "${MLPES_TEST_WORKERS:-2}" --cov=aiida_mlpes --cov-report=term "$@"
