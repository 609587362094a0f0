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

stop_session() {  # pidfile name
  local pidfile="$1" name="$2" sid pids
  if [[ ! -s "$pidfile" ]]; then echo "$name: not running"; return 0; fi
  sid="$(cat "$pidfile")"
  pids="$(session_pids "$sid")"
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 30); do
      pids="$(session_pids "$sid")"
      [[ -z "$pids" ]] && break
      sleep 0.5
    done
    if [[ -n "$pids" ]]; then
      echo "$name: still alive after SIGTERM, sending SIGKILL to: $pids" >&2
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      for _ in $(seq 1 20); do [[ -z "$(session_pids "$sid")" ]] && break; sleep 0.25; done
    fi
  fi
  rm -f "$pidfile"
  echo "$name: stopped (session $sid)"
}
