#!/usr/bin/env bash
# Fault: the disk behind the engine (its data-root: container layers and
# the containers' logs, which hold kept tasks' output) nearly full.
#
# Makes a DISK_MB (300) ext4 image, loop-mounts it as the data-root of its
# own dockerd (never the machine's), builds the examples image on it,
# starts `tcp-task serve` with a warm catalog task, then fills the disk
# with a ballast file up to FREE_MB (20) MB free and runs:
# - BIG (6) attached tasks at once that each write BIG_MB (30) MB to
#   stdout (`randbytes`, all with one seed, so every complete output is
#   byte-identical);
# - one detached task writing BIG_MB MB, then `wait` and `logs`;
# - small tasks: a warm catalog one (`task sum`) and a cold one (`run echo`).
# Checks: every task ends with either its complete output or a clear
# error (exit 125 with a message, or a non-zero status the message
# explains), never a silent exit 0 with output missing; a detached task's
# `logs` are complete or it says the output is incomplete; the server stays
# up and answers; the warm catalog task still runs; once the ballast is
# removed cold tasks run again. The mount and loop device are removed on
# exit.
#
#   sudo bash scripts/faults/disk-full.sh
#
# Knobs: DISK_MB, FREE_MB, BIG, BIG_MB. Prints `N passed, M failed`.
source "$(dirname "$0")/lib.sh"

DISK_MB=${DISK_MB:-300}
FREE_MB=${FREE_MB:-20}
BIG=${BIG:-6}
BIG_MB=${BIG_MB:-30}
big_bytes=$((BIG_MB * 1000 * 1000))

build
ENGINE_DATA=$FAULT_DIR/disk
mkdir -p "$ENGINE_DATA"
truncate -s "${DISK_MB}M" "$FAULT_DIR/disk.img"
mkfs.ext4 -q -F "$FAULT_DIR/disk.img"
mount -o loop "$FAULT_DIR/disk.img" "$ENGINE_DATA"
loop=$(findmnt -n -o SOURCE "$ENGINE_DATA")
# Run before the generic clean-up: the engine is stopped by then.
CLEANUPS+=("umount '$ENGINE_DATA' 2>/dev/null || umount -l '$ENGINE_DATA'; losetup -d '$loop' 2>/dev/null || true")
log "engine data-root on $loop ($DISK_MB MB ext4) at $ENGINE_DATA"

cat >"$FAULT_DIR/server.toml" <<EOF
[catalog.sum]
image = "$IMAGE"
command = ["sum"]
warm = 2
reuse = 100000
EOF

engine_start
build_image
server_start
wait_for 60 '[ "$(tcp task sum 1 2 2>/dev/null)" = 3 ]'
log "server $SERVER_PID on 127.0.0.1:$PORT; $(df -m --output=avail "$ENGINE_DATA" | tail -1) MB free"
reference=$(tcp run "$IMAGE" randbytes "$big_bytes" 42 | sha256sum | cut -c1-64)
log "reference output of randbytes $big_bytes 42: $reference"

avail_mb=$(df -m --output=avail "$ENGINE_DATA" | tail -1)
fallocate -l "$(((avail_mb - FREE_MB) * 1024 * 1024))" "$ENGINE_DATA/ballast"
log "ballast written: $(df -m --output=avail "$ENGINE_DATA" | tail -1) MB free"

# BIG attached tasks at once.
for ((j = 0; j < BIG; j++)); do
    (
        status=0
        timeout 300 "$BIN" --server "127.0.0.1:$PORT" run "$IMAGE" randbytes "$big_bytes" 42 \
            >"$FAULT_DIR/big.$j.out" 2>"$FAULT_DIR/big.$j.err" || status=$?
        echo "$status" >"$FAULT_DIR/big.$j.status"
    ) &
    JOBS+=($!)
done
detached=$(tcp run -d "$IMAGE" randbytes "$big_bytes" 42 || echo refused)
log "detached big task: $detached"

# Small tasks while the big ones write.
sleep 2
warm_ok=0 cold_ok=0 cold_err=0
for ((k = 0; k < 5; k++)); do
    [[ $(timeout 60 "$BIN" --server "127.0.0.1:$PORT" task sum 1 2 2>/dev/null) == 3 ]] && warm_ok=$((warm_ok + 1))
    if timeout 120 "$BIN" --server "127.0.0.1:$PORT" run "$IMAGE" echo small \
        >"$FAULT_DIR/small.out" 2>"$FAULT_DIR/small.err"; then
        cold_ok=$((cold_ok + 1))
    else
        cold_err=$((cold_err + 1))
        log "small cold task while full: $(head -c 300 "$FAULT_DIR/small.err")"
    fi
done
log "small tasks while the disk is full: warm $warm_ok/5 ok; cold $cold_ok ok, $cold_err errors"
check "the warm catalog task runs while the disk is full" [ "$warm_ok" -ge 4 ]
check "the server is up while the disk is full" kill -0 "$SERVER_PID"
check "/healthz answers" curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" -o /dev/null

for ((j = 0; j < BIG; j++)); do
    wait_for 300 '[ -f "$FAULT_DIR/big.$j.status" ]' || true
done
complete=0 clean_error=0 silent=0
for ((j = 0; j < BIG; j++)); do
    status=$(cat "$FAULT_DIR/big.$j.status" 2>/dev/null || echo hung)
    size=$(stat -c %s "$FAULT_DIR/big.$j.out")
    sum=$(sha256sum <"$FAULT_DIR/big.$j.out" | cut -c1-64)
    message=$({ grep -v '^$' "$FAULT_DIR/big.$j.err" || true; } | tail -1 | head -c 300)
    if [[ $status == 0 && $sum == "$reference" ]]; then
        complete=$((complete + 1))
    elif [[ $status != 0 && $status != hung && $status != 124 && -n $message ]]; then
        clean_error=$((clean_error + 1))
        log "big task $j: exit $status after $size bytes: $message"
    else
        silent=$((silent + 1))
        log "big task $j: exit $status, $size of $big_bytes bytes, no explanation: $message"
    fi
done
log "big attached tasks: $complete complete, $clean_error clear errors, $silent silent or hung"
check "no big task ended silently incomplete or hung" [ "$silent" = 0 ]

if [[ $detached == refused ]]; then
    log "the detached task was refused (counted as a clear error)"
else
    set +e
    status=$(timeout 300 "$BIN" --server "127.0.0.1:$PORT" wait "$detached" 2>"$FAULT_DIR/dwait.err")
    rc=$?
    timeout 120 "$BIN" --server "127.0.0.1:$PORT" logs "$detached" \
        >"$FAULT_DIR/detached.out" 2>"$FAULT_DIR/detached.err"
    logs_rc=$?
    set -e
    size=$(stat -c %s "$FAULT_DIR/detached.out")
    sum=$(sha256sum <"$FAULT_DIR/detached.out" | cut -c1-64)
    log "detached big task: wait exit $rc status '$status' $(head -c 200 "$FAULT_DIR/dwait.err"); logs exit $logs_rc, $size of $big_bytes bytes $(head -c 200 "$FAULT_DIR/detached.err")"
    if [[ $rc == 0 && $status == 0 ]]; then
        check "a detached task that exited 0 has its whole output in logs, or logs says it is incomplete" \
            bash -c "[[ '$sum' == '$reference' ]] || grep -qiE 'could not keep|incomplete|space|truncat' '$FAULT_DIR/detached.err'"
    else
        check "a detached task that failed says why" [ -s "$FAULT_DIR/dwait.err" -o "$status" != "" ]
    fi
fi

rm -f "$ENGINE_DATA/ballast"
log "ballast removed: $(df -m --output=avail "$ENGINE_DATA" | tail -1) MB free"
check "a cold task runs again once there is room" \
    wait_for 60 '[[ $(timeout 60 "$BIN" --server "127.0.0.1:$PORT" run "$IMAGE" echo back 2>/dev/null) == back ]]'
check "the server is still up" kill -0 "$SERVER_PID"
[[ $detached == refused ]] || tcp rm -f "$detached" >/dev/null 2>&1 || true
server_stop
check "no container left after the server's shutdown" wait_for 30 '[ -z "$(managed_containers)" ]'

echo "disk-full: big $BIG x $BIG_MB MB with $FREE_MB MB free: complete $complete, clear errors $clean_error, silent $silent; small while full: warm $warm_ok/5, cold ok $cold_ok errors $cold_err"
finish
