#!/usr/bin/env bash
# A local Ray head for dreamray: token auth on, dashboard on 127.0.0.1 only.
#
#   cluster/local_head.sh start|stop|status|env
#
# Settings (environment, defaults in brackets):
#   DREAMRAY_HEAD_PORT [6379]        GCS port            DREAMRAY_DASHBOARD_PORT [8265]
#   DREAMRAY_METRICS_PORT [8090]     Prometheus metrics  DREAMRAY_CLIENT_PORT [10001]
#   DREAMRAY_AGENT_PORT [52465]      dashboard agent     DREAMRAY_HEAD_CPUS [4]
#   DREAMRAY_VENV [<repo>/.venv]     its bin/ goes first on PATH, so jobs' `python` is the venv's
#   RAY_AUTH_TOKEN_PATH [~/.ray/auth_token]  the token (generated on first start if missing)
#
# The head runs as `ray start --block` in its own session (setsid); its pid (= the session id)
# is kept in $STATE/head.pid, and `stop` signals only the processes of that session, by pid:
# never a bare `ray stop`, which would kill every Ray process of the user on this machine.
# Ray's temp dir is $STATE/ray, so the "current cluster" marker this head writes does not
# replace the one in /tmp/ray that other local clusters use.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEAD_PORT="${DREAMRAY_HEAD_PORT:-6379}"
DASHBOARD_PORT="${DREAMRAY_DASHBOARD_PORT:-8265}"
METRICS_PORT="${DREAMRAY_METRICS_PORT:-8090}"
CLIENT_PORT="${DREAMRAY_CLIENT_PORT:-10001}"
AGENT_PORT="${DREAMRAY_AGENT_PORT:-52465}"
CPUS="${DREAMRAY_HEAD_CPUS:-4}"
VENV="${DREAMRAY_VENV:-$REPO/.venv}"
# Unix socket paths under the temp dir must stay short (108 bytes): keep the state in /tmp.
STATE="${DREAMRAY_HEAD_STATE:-/tmp/dreamray-head-$HEAD_PORT}"
TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
PIDFILE="$STATE/head.pid"

export PATH="$VENV/bin:$PATH"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$TOKEN_PATH"
export RAY_TRAIN_ENABLE_STATE_TRACKING=1

source "$REPO/cluster/_session.sh"

dashboard_url() { echo "http://127.0.0.1:$DASHBOARD_PORT"; }

wait_ready() {
  local deadline=$((SECONDS + ${DREAMRAY_START_TIMEOUT:-180}))
  until curl -sf -H "Authorization: Bearer $(cat "$TOKEN_PATH")" \
      "$(dashboard_url)/api/version" >/dev/null 2>&1; do
    if ! session_alive "$PIDFILE"; then
      echo "local_head: the head exited; see $STATE/head.log" >&2; tail -20 "$STATE/head.log" >&2
      return 1
    fi
    if (( SECONDS > deadline )); then
      echo "local_head: dashboard not up after ${DREAMRAY_START_TIMEOUT:-180}s" >&2; return 1
    fi
    sleep 1
  done
}

start() {
  if session_alive "$PIDFILE"; then
    echo "local_head: already running (pid $(cat "$PIDFILE")), dashboard $(dashboard_url)"
    return 0
  fi
  mkdir -p "$STATE"
  if [[ ! -s "$TOKEN_PATH" ]]; then
    # What `ray get-auth-token --generate` writes (256 random bits, hex), but at TOKEN_PATH.
    mkdir -p "$(dirname "$TOKEN_PATH")"
    (umask 077; python -c "import secrets; print(secrets.token_hex(32), end='')" >"$TOKEN_PATH")
  fi
  setsid ray start --head --block --disable-usage-stats \
    --port "$HEAD_PORT" --num-cpus "$CPUS" --temp-dir "$STATE/ray" \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --dashboard-agent-listen-port "$AGENT_PORT" --metrics-export-port "$METRICS_PORT" \
    --ray-client-server-port "$CLIENT_PORT" \
    ${DREAMRAY_RAY_START_ARGS:-} >"$STATE/head.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_ready
  echo "local_head: started (pid $(cat "$PIDFILE"))"
  echo "  address:   127.0.0.1:$HEAD_PORT"
  echo "  dashboard: $(dashboard_url)   metrics: http://127.0.0.1:$METRICS_PORT/metrics"
  echo "  token:     $TOKEN_PATH (clients need RAY_AUTH_MODE=token)"
}

case "${1:-}" in
  start) start ;;
  stop) stop_session "$PIDFILE" local_head ;;
  status)
    if session_alive "$PIDFILE"; then
      echo "local_head: running (pid $(cat "$PIDFILE")), dashboard $(dashboard_url)"
    else
      echo "local_head: not running"; exit 3
    fi ;;
  env)  # for `eval "$(cluster/local_head.sh env)"` before `ray job submit`
    echo "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH='$TOKEN_PATH'"
    echo "export RAY_ADDRESS='$(dashboard_url)' PATH='$VENV/bin':\"\$PATH\"" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
