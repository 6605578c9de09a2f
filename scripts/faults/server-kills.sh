#!/usr/bin/env bash
# Fault: the server SIGKILLed and restarted KILLS times (3) during a load of
# detached tasks, with attached ones running beside them.
#
# Starts its own dockerd (never the machine's), builds the examples image
# on it, starts `tcp-task serve`, then
# - SUBMITTERS loops submit DETACHED tasks in all with `run -d`: task i is
#   `ticks N 60 CODE` with N and CODE from i, so its stdout, stderr and exit
#   code are known in advance (a submission refused while the server is down
#   is retried: it was never accepted; `submitter` and the checks are in
#   lib.sh);
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

start_load 0.5

for ((kill = 1; kill <= KILLS; kill++)); do
    sleep "$KILL_EVERY"
    running=$(docker ps -q --filter label=tcp-task.managed=true | wc -l)
    log "kill $kill: SIGKILL server $SERVER_PID ($running containers running)"
    server_kill
    sleep "$DOWN_SECS"
    server_start
    log "server back as $SERVER_PID"
done

await_tasks

check_detached
log "detached: $submitted accepted ($refused submissions refused while the server was down, retried); $intact intact, $no_such NoSuchTask, $other_error other errors, $wrong wrong"
check_attached
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
