#!/usr/bin/env bash
# Submit a recipe as a Ray job to a local head and wait for it.
#
#   cluster/submit.sh RECIPE RUN_DIR [key.path=value ...]
#
# Uses the head of cluster/local_head.sh (same DREAMRAY_* settings); the job runs
# `python pipelines/full_recipe.py --recipe RECIPE root=$PWD --run-dir RUN_DIR ...` in an
# uploaded copy of this directory (cluster/runtime_env.yaml says what is left out).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
RECIPE="${1:?usage: $0 RECIPE RUN_DIR [overrides]}"
RUN_DIR="$(realpath -m "${2:?usage: $0 RECIPE RUN_DIR [overrides]}")"
shift 2
eval "$(bash cluster/local_head.sh env)"
echo "dashboard: $RAY_ADDRESS   (job + Train runs; token in $RAY_AUTH_TOKEN_PATH)"
ray job submit --address "$RAY_ADDRESS" --working-dir . \
  --runtime-env cluster/runtime_env.yaml ${DREAMRAY_SUBMIT_ARGS:-} \
  -- python pipelines/full_recipe.py --recipe "$RECIPE" "root=$REPO" --run-dir "$RUN_DIR" "$@"
echo "report: $RUN_DIR/report.md"
