#!/usr/bin/env bash
# A second Ray node on this machine, joined to a local head (for multi-node tests and demos).
#
#   cluster/local_worker.sh start|stop|status
#
# Settings (environment, defaults in brackets):
#   DREAMRAY_HEAD_PORT [6379]          the head's GCS port (the head runs on 127.0.0.1's host)
#   DREAMRAY_WORKER_NAME [worker1]     tells several local workers apart
#   DREAMRAY_WORKER_CPUS [2]           DREAMRAY_WORKER_RESOURCES ['{}'] custom resources (JSON)
#   DREAMRAY_WORKER_AGENT_PORT [52466] DREAMRAY_WORKER_METRICS_PORT [8091]  (must differ from
#                                      the head's: both nodes share this machine's ports)
#   DREAMRAY_VENV [<repo>/.venv]       RAY_AUTH_TOKEN_PATH [~/.ray/auth_token] the head's token
#
# Like the head, the node runs as `setsid ray start --block`; `stop` signals only its session.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEAD_PORT="${DREAMRAY_HEAD_PORT:-6379}"
NAME="${DREAMRAY_WORKER_NAME:-worker1}"
CPUS="${DREAMRAY_WORKER_CPUS:-2}"
RESOURCES="${DREAMRAY_WORKER_RESOURCES:-{\}}"
AGENT_PORT="${DREAMRAY_WORKER_AGENT_PORT:-52466}"
METRICS_PORT="${DREAMRAY_WORKER_METRICS_PORT:-8091}"
VENV="${DREAMRAY_VENV:-$REPO/.venv}"
STATE="${DREAMRAY_WORKER_STATE:-/tmp/dreamray-$NAME-$HEAD_PORT}"
TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
PIDFILE="$STATE/node.pid"

export PATH="$VENV/bin:$PATH"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$TOKEN_PATH"
export RAY_TRAIN_ENABLE_STATE_TRACKING=1

source "$REPO/cluster/_session.sh"

start() {
  if session_alive "$PIDFILE"; then
    echo "local_worker $NAME: already running (pid $(cat "$PIDFILE"))"; return 0
  fi
  mkdir -p "$STATE"
  setsid ray start --block --disable-usage-stats --address "127.0.0.1:$HEAD_PORT" \
    --num-cpus "$CPUS" --resources "$RESOURCES" \
    --dashboard-agent-listen-port "$AGENT_PORT" --metrics-export-port "$METRICS_PORT" \
    >"$STATE/node.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + ${DREAMRAY_START_TIMEOUT:-120}))
  until grep -q "Ray runtime started" "$STATE/node.log" 2>/dev/null; do
    if ! session_alive "$PIDFILE"; then
      echo "local_worker $NAME: exited; see $STATE/node.log" >&2; tail -20 "$STATE/node.log" >&2
      return 1
    fi
    (( SECONDS > deadline )) && { echo "local_worker: not up in time" >&2; return 1; }
    sleep 1
  done
  echo "local_worker $NAME: started (pid $(cat "$PIDFILE")), joined 127.0.0.1:$HEAD_PORT"
}

case "${1:-}" in
  start) start ;;
  stop) stop_session "$PIDFILE" "local_worker $NAME" ;;
  status)
    if session_alive "$PIDFILE"; then echo "local_worker $NAME: running (pid $(cat "$PIDFILE"))"
    else echo "local_worker $NAME: not running"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
