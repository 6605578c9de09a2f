#!/usr/bin/env bash
# Faults together: the server SIGKILLed and restarted three times and the
# Docker engine SIGKILLed and restarted once, in one run, under a load of
# detached tasks with attached ones beside them.
#
# Starts its own dockerd with --live-restore (never the machine's), builds
# the examples image on it, starts `tcp-task serve` with
# `[executor] engine_outage = "hold"`, then
# - SUBMITTERS loops submit DETACHED tasks with `run -d`, SUBMIT_GAP apart:
#   task i is `ticks N 500 CODE` (N = 60 + i mod 41, 30-50 s: long enough
#   to outlive the engine's outage), so its output and exit code are known
#   (`submitter` in lib.sh); a submission refused while the server is down
#   is retried;
# - ATTACHED `tcp-task run … ticks 60 500 3` run in the foreground of their
#   own shells;
# - kill 1: the server SIGKILLed and started again (engine up);
# - the engine SIGKILLed (its containers run on: live-restore);
# - kill 2: the server SIGKILLed and started again WHILE THE ENGINE IS
#   DOWN: it must start, say it is not ready, hold a new task, and take
#   over the earlier servers' tasks once the engine answers;
# - the engine started again after ENGINE_DOWN seconds;
# - kill 3: the server SIGKILLed and started again (engine up).
# Then every detached task's `wait` (exit code) and `logs` (sha256 of
# stdout and of stderr) are checked against what it must print, and
# against what the engine kept of its container (`docker logs`, `docker
# inspect`): with live-restore, a container that exits while dockerd is
# down keeps its exit code but loses the output it wrote meanwhile, an
# engine limit (docs/RELIABILITY.md), counted apart as "as the engine
# kept it". Each task is intact, as the engine kept it, a clear error, or
# wrong/lost (the failure); every attached run's status and output too.
#
#   sudo flock /tmp/heavy.lock bash scripts/faults/kills-and-engine.sh
#
# Knobs: DETACHED (48), ATTACHED (6), SUBMITTERS (4), SUBMIT_GAP (1),
# MAX_CONCURRENT (24), DOWN_SECS (2, the server's), ENGINE_DOWN (10).
# Needs root (dockerd), curl, python3; prints `N passed, M failed`.
source "$(dirname "$0")/lib.sh"

DETACHED=${DETACHED:-48}
ATTACHED=${ATTACHED:-6}
SUBMITTERS=${SUBMITTERS:-4}
SUBMIT_GAP=${SUBMIT_GAP:-1}
MAX_CONCURRENT=${MAX_CONCURRENT:-24}
DOWN_SECS=${DOWN_SECS:-2}
ENGINE_DOWN=${ENGINE_DOWN:-10}
TICKS_BASE=60 TICKS_SPREAD=41 TICK_MS=500
ATTACHED_TICKS=60 ATTACHED_MS=500
# Not intact but what the engine kept: counted apart (check_detached).
ENGINE_KEPT=1

ENGINE_ARGS+=(--live-restore)
cat >"$FAULT_DIR/server.toml" <<EOF
[server]
# An attached run's client is back within its resume window, but the task
# it left must wait through the engine's outage as well.
reattach_grace = 120

[executor]
engine_outage = "hold"
max_concurrent = $MAX_CONCURRENT
EOF

start_all
log "server $SERVER_PID on 127.0.0.1:$PORT, HTTP $HTTP_PORT, engine $ENGINE_PID (live-restore)"

running() { docker ps -q --filter label=tcp-task.managed=true 2>/dev/null | wc -l; }
# kill_server N WHY: SIGKILL the server, start it again DOWN_SECS later.
kill_server() {
    log "kill $1 ($2): SIGKILL server $SERVER_PID"
    server_kill
    sleep "$DOWN_SECS"
    log_from=$(wc -l <"$FAULT_DIR/server.log")
    check "the server starts again after kill $1 ($2)" server_start
    log "server back as $SERVER_PID"
}

start_load 1

sleep 4
kill_server 1 "engine up, $(running) containers running"

sleep 6
log "$(running) containers running; SIGKILL dockerd $ENGINE_PID"
kill -KILL "$ENGINE_PID"
wait "$ENGINE_PID" 2>/dev/null || true
ENGINE_PID=
killed_at=$SECONDS
check "/readyz says not ready within 5 s of the engine's death" wait_for 5 '[ "$(readyz)" = 503 ]'

sleep 2
kill_server 2 "engine down"
if kill -0 "$SERVER_PID" 2>/dev/null; then
    check "/readyz says not ready while the engine is down" [ "$(readyz)" = 503 ]
    check "status answers while the engine is down" timeout 30 "$BIN" --server "127.0.0.1:$PORT" status >/dev/null
    # Held: it waits for the engine, and runs once it is back.
    start_held_task
fi

sleep $((ENGINE_DOWN - (SECONDS - killed_at) > 0 ? ENGINE_DOWN - (SECONDS - killed_at) : 0))
engine_start
log "engine back after $((SECONDS - killed_at)) s"
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    # It did not start without the engine: start it now, to see what the
    # tasks come to all the same.
    log "the server is not running; starting it again now the engine is back"
    log_from=$(wc -l <"$FAULT_DIR/server.log")
    server_start
fi
check "/readyz is ready again within 60 s of the engine's return" wait_for 60 '[ "$(readyz)" = 200 ]'
check "the server started during the outage took over the earlier tasks once the engine answered" \
    wait_for 60 'tail -n +"$((log_from + 1))" "$FAULT_DIR/server.log" | grep -q "took over the tasks"'
if [[ -n ${held_pid:-} ]]; then
    check_held_task
fi

sleep 4
kill_server 3 "engine up, $(running) containers running"

await_tasks

check_detached
log "detached: $submitted accepted ($refused submissions refused while the server was down, retried); $intact intact, $engine_kept as the engine kept them, $no_such NoSuchTask, $other_error other errors, $wrong wrong"
check_attached
log "attached: $ATTACHED: $att_intact intact (resumed), $att_error clear errors, $att_wrong wrong or hung"

check "every detached task was accepted once" [ "$submitted" = "$DETACHED" ]
check "no detached task wrong or silently lost" [ "$wrong" = 0 ]
check "no accepted detached task lost (NoSuchTask)" [ "$no_such" = 0 ]
check "no detached task ended in an error" [ "$other_error" = 0 ]
check "no attached run wrong or hung" [ "$att_wrong" = 0 ]
check "the server survived (still serving)" timeout 60 "$BIN" --server "127.0.0.1:$PORT" run "$IMAGE" echo after
cut -d' ' -f2 "$FAULT_DIR/ids" | xargs -r -n 50 "$BIN" --server "127.0.0.1:$PORT" rm -f >/dev/null 2>&1 || true
server_stop
check "no container left after the server's shutdown" wait_for 30 '[ -z "$(managed_containers)" ]'
managed_containers | head >&2

echo "kills-and-engine: 3 server kills (one while the engine was down), 1 engine restart; detached $submitted: intact $intact, as-engine-kept $engine_kept, NoSuchTask $no_such, errors $other_error, wrong $wrong; attached $ATTACHED: intact $att_intact, errors $att_error, wrong $att_wrong"
finish
