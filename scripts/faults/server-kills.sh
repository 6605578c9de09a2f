#!/usr/bin/env bash
# Fault: the server SIGKILLed and restarted KILLS times (3) during a load of
# detached tasks, with attached ones running beside them.
#
# Starts its own dockerd (never the machine's), builds the examples image
# on it, starts `tcp-task serve`, then
# - SUBMITTERS loops submit DETACHED tasks in all with `run -d`: task i is
#   `ticks N 60 CODE` with N and CODE from i, so its stdout, stderr and exit
#   code are known in advance (a submission refused while the server is down
#   is retried: it was never accepted);
# - ATTACHED `tcp-task run … ticks 30 250 3` run in the foreground of their
#   own shells, started along the way;
# - the server is killed with SIGKILL every KILL_EVERY seconds and started
#   again on the same address after DOWN_SECS.
# Then every detached task's `wait` (exit code) and `logs` (sha256 of
# stdout and of stderr) are checked against what it must print, and every
# attached run's exit status and output. Each task is counted as intact,
# ended with a clear error (which), or lost/wrong (silently: the failure).
#
#   sudo bash scripts/faults/server-kills.sh
#
# Knobs: DETACHED (150), ATTACHED (12), SUBMITTERS (4), SUBMIT_GAP (0),
# KILLS (3), KILL_EVERY (8), DOWN_SECS (2).
#
# A task still waiting in the server's queue when it is killed is run by the
# next server from its ticket in the state directory; one that is lost
# anyway (`wait` and a resumed `run` say "no task …", exit 125) is counted
# as NoSuchTask, apart from tasks that are wrong or hang. Prints
# `N passed, M failed`.
source "$(dirname "$0")/lib.sh"

DETACHED=${DETACHED:-150}
ATTACHED=${ATTACHED:-12}
SUBMITTERS=${SUBMITTERS:-4}
KILLS=${KILLS:-3}
KILL_EVERY=${KILL_EVERY:-8}
DOWN_SECS=${DOWN_SECS:-2}
# Seconds each submitter waits between tasks: 0 submits them all at once
# (most wait in the server's queue), more keeps the queue short.
SUBMIT_GAP=${SUBMIT_GAP:-0}

start_all
log "server $SERVER_PID on 127.0.0.1:$PORT, engine $ENGINE_PID"

# Task i: `ticks N 60 CODE`; its stdout is `out 0`…`out N-1`, stderr
# `err 0`…, exit CODE.
ticks_of() { echo $((4 + $1 % 37)); }
code_of() { echo $(($1 % 101)); }
expected() { # STREAM N
    local i
    for ((i = 0; i < $2; i++)); do echo "$1 $i"; done | sha256sum | cut -c1-64
}

# submitter K: submits tasks K, K+SUBMITTERS, …; writes "i id" lines.
submitter() {
    local k=$1 i id tries
    for ((i = k; i < DETACHED; i += SUBMITTERS)); do
        for ((tries = 0; tries < 100; tries++)); do
            if id=$("$BIN" --server "127.0.0.1:$PORT" run -d "$IMAGE" ticks \
                "$(ticks_of "$i")" 60 "$(code_of "$i")" 2>>"$FAULT_DIR/submit.err"); then
                echo "$i $id" >>"$FAULT_DIR/ids.$k"
                sleep "$SUBMIT_GAP"
                break
            fi
            echo "$i refused" >>"$FAULT_DIR/refused"
            sleep 0.3
        done
    done
}

# attached J: one `run` in the foreground, its outputs and status kept.
attached() {
    local j=$1 status=0
    "$BIN" --server "127.0.0.1:$PORT" run "$IMAGE" ticks 30 250 3 \
        >"$FAULT_DIR/att.$j.out" 2>"$FAULT_DIR/att.$j.err" || status=$?
    echo "$status" >"$FAULT_DIR/att.$j.status"
}

for ((k = 0; k < SUBMITTERS; k++)); do
    submitter "$k" &
    JOBS+=($!)
done
submitters=("${JOBS[@]}")
for ((j = 0; j < ATTACHED; j++)); do
    attached "$j" &
    JOBS+=($!)
    sleep 0.5
done

for ((kill = 1; kill <= KILLS; kill++)); do
    sleep "$KILL_EVERY"
    running=$(docker ps -q --filter label=tcp-task.managed=true | wc -l)
    log "kill $kill: SIGKILL server $SERVER_PID ($running containers running)"
    server_kill
    sleep "$DOWN_SECS"
    server_start
    log "server back as $SERVER_PID"
done

for pid in "${submitters[@]}"; do wait "$pid"; done
log "all submissions done"
for ((j = 0; j < ATTACHED; j++)); do
    wait_for 300 '[ -f "$FAULT_DIR/att.$j.status" ]' || true
done

# The detached tasks.
cat "$FAULT_DIR"/ids.* | sort -n >"$FAULT_DIR/ids"
submitted=$(wc -l <"$FAULT_DIR/ids")
# No file when no submission was refused (pipefail would end the script).
refused=0
[[ -f $FAULT_DIR/refused ]] && refused=$(wc -l <"$FAULT_DIR/refused")
intact=0 no_such=0 other_error=0 wrong=0
while read -r i id; do
    n=$(ticks_of "$i")
    set +e
    status=$(timeout 300 "$BIN" --server "127.0.0.1:$PORT" wait "$id" 2>"$FAULT_DIR/wait.err")
    rc=$?
    set -e
    if [[ $rc != 0 ]]; then
        if grep -q 'no task' "$FAULT_DIR/wait.err" || grep -qi 'NoSuchTask' "$FAULT_DIR/wait.err"; then
            no_such=$((no_such + 1))
        else
            other_error=$((other_error + 1))
        fi
        log "task $i ($id): wait exit $rc: $(cat "$FAULT_DIR/wait.err")"
        continue
    fi
    timeout 60 "$BIN" --server "127.0.0.1:$PORT" logs "$id" \
        >"$FAULT_DIR/t.out" 2>"$FAULT_DIR/t.err" || true
    out=$(sha256sum <"$FAULT_DIR/t.out" | cut -c1-64)
    err=$(sha256sum <"$FAULT_DIR/t.err" | cut -c1-64)
    if [[ $status == "$(code_of "$i")" && $out == "$(expected out "$n")" && $err == "$(expected err "$n")" ]]; then
        intact=$((intact + 1))
    else
        wrong=$((wrong + 1))
        log "task $i ($id): exit $status (want $(code_of "$i")), $(wc -l <"$FAULT_DIR/t.out")/$n stdout lines, $(wc -l <"$FAULT_DIR/t.err")/$n stderr lines"
    fi
done <"$FAULT_DIR/ids"
log "detached: $submitted accepted ($refused submissions refused while the server was down, retried); $intact intact, $no_such NoSuchTask, $other_error other errors, $wrong wrong"

# The attached runs.
att_intact=0 att_error=0 att_wrong=0
want_out=$(expected out 30)
want_err=$(expected err 30)
for ((j = 0; j < ATTACHED; j++)); do
    status=$(cat "$FAULT_DIR/att.$j.status" 2>/dev/null || echo hung)
    out=$(sha256sum <"$FAULT_DIR/att.$j.out" | cut -c1-64)
    # The CLI writes its own notes (a resume) to stderr: compare the task's lines only.
    err=$({ grep -E '^err [0-9]+$' "$FAULT_DIR/att.$j.err" || true; } | sha256sum | cut -c1-64)
    if [[ $status == 3 && $out == "$want_out" && $err == "$want_err" ]]; then
        att_intact=$((att_intact + 1))
    elif [[ $status == 125 ]] && grep -q 'tcp-task:' "$FAULT_DIR/att.$j.err"; then
        att_error=$((att_error + 1))
        log "attached $j: exit 125: $(grep 'tcp-task:' "$FAULT_DIR/att.$j.err" | tail -1)"
    else
        att_wrong=$((att_wrong + 1))
        log "attached $j: exit $status, $(wc -l <"$FAULT_DIR/att.$j.out")/30 stdout lines"
    fi
done
log "attached: $ATTACHED: $att_intact intact (resumed), $att_error clear errors, $att_wrong wrong or hung"

check "every detached task was accepted once" [ "$submitted" = "$DETACHED" ]
check "no detached task wrong or silently lost" [ "$wrong" = 0 ]
check "no detached task ended in an unexplained error" [ "$other_error" = 0 ]
check "no accepted detached task lost (NoSuchTask: it was queued when the server died)" [ "$no_such" = 0 ]
check "no attached run wrong or hung" [ "$att_wrong" = 0 ]
check "the server survived (still serving)" timeout 30 "$BIN" --server "127.0.0.1:$PORT" task sum 1 2
cut -d' ' -f2 "$FAULT_DIR/ids" | xargs -r -n 50 "$BIN" --server "127.0.0.1:$PORT" rm -f >/dev/null 2>&1 || true
server_stop
check "no container left after the server's shutdown" wait_for 30 '[ -z "$(managed_containers)" ]'

echo "server-kills: $KILLS kills; detached $submitted: intact $intact, NoSuchTask $no_such, other errors $other_error, wrong $wrong; attached $ATTACHED: intact $att_intact, errors $att_error, wrong $att_wrong"
finish
