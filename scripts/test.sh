#!/usr/bin/env bash
# Run the checks and the test suite: ruff (lint + format), mypy on aiida_mlpes/core, the documentation build
# (Sphinx, warnings are errors; MLPES_DOCS=0 skips it), pytest with coverage.
# Sets up the environment first if it is missing (scripts/setup.sh --no-demo). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` or `bash scripts/test.sh tests/core`.
# Tests that need the real program outputs read them from MLPES_REALDATA (default ../shared/realdata) and are
# skipped, with the reason, when it is missing; MLPES_REQUIRE_REALDATA=1 makes that a failure (.ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
cd "$ROOT"
if [ ! -x "$VENV/bin/pytest" ] || [ ! -x "$VENV/bin/sphinx-build" ] || ! "$VENV/bin/python" -c "import aiida_mlpes" >/dev/null 2>&1 || ! command -v xtb >/dev/null; then
  bash "$ROOT/scripts/setup.sh" --no-demo
fi
echo "==> ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "==> mypy aiida_mlpes/core"
"$VENV/bin/mypy" --config-file setup.cfg
if [ "${MLPES_DOCS:-1}" != "0" ]; then
  echo "==> docs (sphinx-build -W)"
  docs_start=$(date +%s)
  # -E: read every page again so no warning is hidden by a cached build
  "$VENV/bin/sphinx-build" -E -W --keep-going -q -b html docs docs/_build/html
  echo "docs built in $(( $(date +%s) - docs_start )) s: docs/_build/html/index.html"
fi
echo "==> pytest"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/pytest" -n "${MLPES_TEST_WORKERS:-2}" --cov=aiida_mlpes --cov-report=term "$@"
