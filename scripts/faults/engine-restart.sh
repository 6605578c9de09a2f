#!/usr/bin/env bash
# Fault: the Docker engine SIGKILLed mid-run, then started again.
#
# Starts its own dockerd (own data-root, exec-root, socket; never the
# machine's), builds the examples image on it, starts `tcp-task serve`
# against it with HTTP, then runs a load of warm catalog tasks
# (`bench load --task sum`) and a set of detached cold tasks (`run -d …
# ticks`), kills dockerd with SIGKILL in the middle, and starts it again.
#
# Checks: while the engine is down /readyz says 503 and why, a new task
# ends at once with a clear error (exit 125, the message names the
# engine), status still answers; after the restart /readyz is ready again,
# new tasks run, and every detached task has a result: its full output and
# exit code, or an error that says what happened (none missing, none
# hanging); the load lost and duplicated nothing (its failures are errors
# by kind); no container is left once the server has stopped.
#
#   sudo bash scripts/faults/engine-restart.sh            # live-restore off (Docker's default)
#   LIVE_RESTORE=1 sudo bash scripts/faults/engine-restart.sh
#
# Knobs: DETACHED (16), LOAD_TASKS (4000), DOWN_SECS (5), LIVE_RESTORE (0),
# ENGINE_OUTAGE (fail; `hold` makes tasks about to start wait for the
# engine instead: [executor] engine_outage).
# Needs root (dockerd), curl, python3; prints `N passed, M failed`.
source "$(dirname "$0")/lib.sh"

DETACHED=${DETACHED:-16}
LOAD_TASKS=${LOAD_TASKS:-4000}
DOWN_SECS=${DOWN_SECS:-5}
LIVE_RESTORE=${LIVE_RESTORE:-0}
# A detached task: TICKS lines on stdout and on stderr, 400 ms apart, exit
# 7. With live-restore they should outlive the outage (dockerd takes 5-20 s
# to come back on a busy machine).
if [[ $LIVE_RESTORE == 1 ]]; then TICKS=${TICKS:-150}; else TICKS=${TICKS:-40}; fi

if [[ $LIVE_RESTORE == 1 ]]; then
    ENGINE_ARGS+=(--live-restore)
fi

cat >"$FAULT_DIR/server.toml" <<EOF
[executor]
engine_outage = "${ENGINE_OUTAGE:-fail}"

[catalog.sum]
image = "$IMAGE"
command = ["sum"]
warm = 4
reuse = 100000
EOF

start_all
log "server $SERVER_PID on 127.0.0.1:$PORT, HTTP $HTTP_PORT, engine $ENGINE_PID (live-restore $LIVE_RESTORE)"
check "/readyz is ready before the fault" [ "$(readyz)" = 200 ]
wait_for 60 'curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" -o /dev/null'

# What a detached task must print.
expected_out=$(for ((i = 0; i < TICKS; i++)); do echo "out $i"; done | sha256sum)
expected_err=$(for ((i = 0; i < TICKS; i++)); do echo "err $i"; done | sha256sum)

tcp bench load --connections 8 --tasks "$LOAD_TASKS" --json --task sum 1 2 3 \
    >"$FAULT_DIR/load.json" 2>"$FAULT_DIR/load.err" &
LOAD_PID=$!
JOBS+=("$LOAD_PID")
sleep 3

ids=()
for ((i = 0; i < DETACHED; i++)); do
    ids+=("$(tcp run -d "$IMAGE" ticks "$TICKS" 400 7)")
done
log "${#ids[@]} detached tasks accepted"

# Kill the engine while detached tasks run and the load is in full swing.
detached_running() { docker ps -q --filter label=tcp-task.detach=true | wc -l; }
wait_for 120 '[ "$(detached_running)" -ge "$((DETACHED / 4))" ]' || true
sleep 2
log "$(detached_running) detached containers running, $(docker ps -q | wc -l) in all"
log "SIGKILL dockerd $ENGINE_PID"
kill -KILL "$ENGINE_PID"
wait "$ENGINE_PID" 2>/dev/null || true
ENGINE_PID=
killed_at=$(date +%s.%N)

check "/readyz says not ready within 5 s of the engine's death" wait_for 5 '[ "$(readyz)" = 503 ]'
curl -s "http://127.0.0.1:$HTTP_PORT/readyz" >"$FAULT_DIR/readyz-down.json"
check "/readyz names the engine as the reason" grep -q 'engine' "$FAULT_DIR/readyz-down.json"
if [[ ${ENGINE_OUTAGE:-fail} == hold ]]; then
    # Held: it waits for the engine, and runs once it is back.
    start_held_task
else
    set +e
    timeout 60 "$BIN" --server "127.0.0.1:$PORT" run "$IMAGE" echo while-down \
        >"$FAULT_DIR/down.out" 2>"$FAULT_DIR/down.err"
    down_status=$?
    set -e
    log "a task while the engine is down: exit $down_status, $(head -c 300 "$FAULT_DIR/down.err")"
    check "a new task fails with exit 125 while the engine is down (no hang)" [ "$down_status" = 125 ]
    check "its message names the engine" grep -qi 'engine' "$FAULT_DIR/down.err"
fi
check "status answers while the engine is down" timeout 30 "$BIN" --server "127.0.0.1:$PORT" status >/dev/null
check "the server is still running" kill -0 "$SERVER_PID"

sleep "$DOWN_SECS"
engine_start
back_at=$(date +%s.%N)
check "/readyz is ready again within 30 s of the engine's return" wait_for 30 '[ "$(readyz)" = 200 ]'
ready_at=$(date +%s.%N)
if [[ ${ENGINE_OUTAGE:-fail} == hold ]]; then
    check_held_task
fi
check "a new task runs after the engine's return" \
    timeout 120 "$BIN" --server "127.0.0.1:$PORT" run "$IMAGE" echo after
check "a catalog task runs after the engine's return" \
    timeout 120 "$BIN" --server "127.0.0.1:$PORT" task sum 1 2
warm_ready() {
    curl -s "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^tcptask_warm_ready_containers/ {n += $2} END {exit !(n > 0)}'
}
check "the warm pool is refilled within 60 s of the engine's return" wait_for 60 warm_ready

# Every detached task: a result or a clear error from `wait`, within a
# bound (nothing hangs). A result is either intact (its whole output, exit
# 7) or exactly what the engine kept of the task: the same stdout and exit
# status as its container (`docker logs`, `docker inspect`). Anything else
# is tcp-task losing or changing a result: wrong.
intact=0 engine_stopped=0 engine_lost_output=0 errors=0 errors_started=0 wrong=0
for id in "${ids[@]}"; do
    set +e
    status=$(timeout 120 "$BIN" --server "127.0.0.1:$PORT" wait "$id" 2>"$FAULT_DIR/wait.err")
    wait_rc=$?
    set -e
    if [[ $wait_rc != 0 ]]; then
        log "task $id: wait failed ($wait_rc): $(cat "$FAULT_DIR/wait.err")"
        if [[ $wait_rc != 124 ]] && grep -q 'tcp-task: ' "$FAULT_DIR/wait.err"; then
            errors=$((errors + 1))
            # A task that had started must get the engine's result, not
            # an error (it waits for the engine to come back).
            if ! grep -q 'inspecting the image\|creating the container' "$FAULT_DIR/wait.err"; then
                errors_started=$((errors_started + 1))
            fi
        else
            wrong=$((wrong + 1))
        fi
        continue
    fi
    timeout 60 "$BIN" --server "127.0.0.1:$PORT" logs "$id" \
        >"$FAULT_DIR/$id.out" 2>"$FAULT_DIR/$id.err" || true
    out=$(sha256sum <"$FAULT_DIR/$id.out")
    err=$(sha256sum <"$FAULT_DIR/$id.err")
    container=$(docker ps -aq --filter "label=tcp-task.id=$id")
    docker logs "$container" >"$FAULT_DIR/$id.engine.out" 2>/dev/null || true
    engine_code=$(docker inspect -f '{{.State.ExitCode}}' "$container" 2>/dev/null || echo none)
    engine_out=$(sha256sum <"$FAULT_DIR/$id.engine.out")
    lines="$(wc -l <"$FAULT_DIR/$id.out") of $TICKS lines"
    if [[ $status == 7 && $out == "$expected_out" && $err == "$expected_err" ]]; then
        intact=$((intact + 1))
    elif [[ $status == "$engine_code" && $out == "$engine_out" && $status != 7 ]]; then
        engine_stopped=$((engine_stopped + 1))
        log "task $id: stopped by the engine's restart: exit $status, $lines, as the engine has it"
    elif [[ $status == "$engine_code" && $out == "$engine_out" ]]; then
        engine_lost_output=$((engine_lost_output + 1))
        log "task $id: exit 7, $lines: the engine's log lacks the rest too"
    else
        wrong=$((wrong + 1))
        log "task $id: exit $status, $lines; the engine says exit $engine_code, $(wc -l <"$FAULT_DIR/$id.engine.out") lines"
    fi
done
log "detached: $intact intact, $engine_stopped stopped by the engine's restart, $engine_lost_output with output the engine lost, $errors clear errors ($errors_started of started tasks), $wrong wrong or lost by tcp-task"
check "every detached task has the engine's result or a clear error" [ "$wrong" = 0 ]
check "no task that had started ended with an engine error" [ "$errors_started" = 0 ]
if [[ $LIVE_RESTORE == 1 ]]; then
    check "with live-restore no task was stopped by the engine's restart" [ "$engine_stopped" = 0 ]
fi

wait "$LOAD_PID" || true
log "load: $(cat "$FAULT_DIR/load.json")"
check "the load lost nothing" [ "$(jq .lost "$FAULT_DIR/load.json")" = 0 ]
check "the load duplicated nothing" [ "$(jq .duplicated "$FAULT_DIR/load.json")" = 0 ]
check "no load task had wrong output" [ "$(jq .wrong "$FAULT_DIR/load.json")" = 0 ]
check "no stray frames" [ "$(jq .stray "$FAULT_DIR/load.json")" = 0 ]

tcp rm -f "${ids[@]}" >/dev/null 2>&1 || true
server_stop
check "no container left after the server's shutdown" wait_for 30 '[ -z "$(managed_containers)" ]'
managed_containers | head >&2

awk -v k="$killed_at" -v b="$back_at" -v r="$ready_at" 'BEGIN {
    printf "engine down %.1f s; ready %.1f s after dockerd answered again\n", b - k, r - b }' >&2
log "load errors: $(jq -c .errors "$FAULT_DIR/load.json")"
echo "engine-restart: live-restore $LIVE_RESTORE; detached $DETACHED: intact $intact, stopped-by-engine $engine_stopped, output-lost-by-engine $engine_lost_output, errors $errors, wrong $wrong; load $(jq -c '{tasks, completed, lost, duplicated, wrong, errors}' "$FAULT_DIR/load.json")"
finish
