# Helpers shared by local_head.sh and local_worker.sh (sourced, not run).
# A node runs as `setsid ray start --block`, so its pid is also the id of a session that holds
# every process the node starts (raylet, GCS, dashboard, workers). Stopping signals exactly
# the members of that session, by pid.

session_alive() {  # pidfile
  [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

session_pids() {  # sid -> pids of that session's processes, one per line
  ps -eo pid=,sid= | awk -v sid="$1" '$2 == sid { print $1 }'
}

wait_session_gone() {  # sid seconds -> 0 when no process of the session is left
  local sid="$1" tries=$(( $2 * 4 ))
  for _ in $(seq 1 "$tries"); do
    [[ -z "$(session_pids "$sid")" ]] && return 0
    sleep 0.25
  done
  return 1
}

stop_session() {  # pidfile name
  local pidfile="$1" name="$2" sid pids
  if [[ ! -s "$pidfile" ]]; then echo "$name: not running"; return 0; fi
  sid="$(cat "$pidfile")"
  # The `ray start --block` leader shuts its node down on SIGTERM (raylet first, GCS last):
  # signal it alone first, so the node stops in Ray's own order.
  kill -TERM "$sid" 2>/dev/null || true
  if ! wait_session_gone "$sid" 20; then
    pids="$(session_pids "$sid")"
    # shellcheck disable=SC2086
    [[ -n "$pids" ]] && kill -TERM $pids 2>/dev/null || true
    if ! wait_session_gone "$sid" 5; then
      pids="$(session_pids "$sid")"
      echo "$name: still alive after SIGTERM, sending SIGKILL to:" $pids >&2
      # shellcheck disable=SC2086
      [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null || true
      wait_session_gone "$sid" 5 || true
    fi
  fi
  rm -f "$pidfile"
  echo "$name: stopped (session $sid)"
}
