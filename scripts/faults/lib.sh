# What the fault scripts (scripts/faults/*.sh, scripts/soak.sh) share.
# Sourced, not run.
#
# Each script works in one directory of its own ($FAULT_DIR, default a fresh
# /tmp/tcp-task-fault.XXXXXX) that holds its own Docker engine (data-root,
# exec-root, socket, pid file, log), its server's config and log, and its
# results. It never touches the machine's engine: DOCKER_HOST points at the
# private one. On exit everything it started is stopped by PID (never by
# name), its mounts undone and the directory removed (KEEP=1 keeps it).
#
# Checks count into PASSED and FAILED; `finish` prints the summary line
# `N passed, M failed` and sets the exit status.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FAULT_DIR=${FAULT_DIR:-$(mktemp -d /tmp/tcp-task-fault.XXXXXX)}
mkdir -p "$FAULT_DIR"
ENGINE_SOCK=$FAULT_DIR/docker.sock
export DOCKER_HOST=unix://$ENGINE_SOCK
# The engine's data root: a script may put it elsewhere (disk-full.sh: on a
# small loop-mounted filesystem) before calling engine_start.
ENGINE_DATA=${ENGINE_DATA:-$FAULT_DIR/data}
ENGINE_ARGS=()
ENGINE_PID=
SERVER_PID=
PORT=
HTTP_PORT=
PASSED=0
FAILED=0
# PIDs of background jobs (loads, clients) to stop on exit.
JOBS=()
# Commands run on exit before the engine stops (unmounts, …), in order.
CLEANUPS=()
IMAGE=tcp-task-examples:0.1.0

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

# check WHAT COMMAND…: runs the command; counts and reports the result.
check() {
    local what=$1
    shift
    if "$@"; then
        PASSED=$((PASSED + 1))
        log "ok: $what"
    else
        FAILED=$((FAILED + 1))
        log "FAILED: $what"
    fi
}

# The tcp-task binary: $TCP_TASK_BIN, else a debug build of this checkout.
build() {
    if [[ -n ${TCP_TASK_BIN:-} ]]; then
        BIN=$TCP_TASK_BIN
        return
    fi
    (cd "$ROOT" && nice -n 10 cargo build --quiet --bin tcp-task)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/tcp-task
}

tcp() { "$BIN" --server "127.0.0.1:$PORT" "$@"; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts the private engine and waits (up to 120 s) until it answers.
# No bridge and no iptables rules: tasks run with network none, and a
# second engine must not touch the host's docker0 or firewall.
engine_start() {
    mkdir -p "$ENGINE_DATA" "$FAULT_DIR/exec"
    [[ -f $FAULT_DIR/daemon.json ]] || echo '{}' >"$FAULT_DIR/daemon.json"
    dockerd --config-file "$FAULT_DIR/daemon.json" \
        --data-root "$ENGINE_DATA" --exec-root "$FAULT_DIR/exec" \
        -H "unix://$ENGINE_SOCK" --pidfile "$FAULT_DIR/docker.pid" \
        --bridge none --iptables=false --ip-masq=false \
        --storage-driver overlay2 "${ENGINE_ARGS[@]}" \
        >>"$FAULT_DIR/dockerd.log" 2>&1 &
    ENGINE_PID=$!
    local started=$SECONDS
    while ((SECONDS - started < 120)); do
        if timeout 10 docker info >/dev/null 2>&1; then
            log "engine $ENGINE_PID ready after $((SECONDS - started)) s"
            return 0
        fi
        kill -0 "$ENGINE_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "the private dockerd did not answer; its log: $FAULT_DIR/dockerd.log"
    tail -n 20 "$FAULT_DIR/dockerd.log" >&2
    return 1
}

# The engine's own containerd (a child of dockerd that outlives a SIGKILL
# of it) and the shims of its containers: found by the sockets in our
# exec-root, so only what this script's engine started.
engine_leftovers() {
    local pid cmdline
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        cmdline=$(tr "\\0" " " 2>/dev/null <"/proc/$pid/cmdline") || continue
        if [[ $cmdline == *"$FAULT_DIR/exec/"* || $cmdline == *"$FAULT_DIR/data/"* ]]; then
            echo "$pid"
        fi
    done
}

engine_stop() {
    if [[ -n $ENGINE_PID ]] && kill -0 "$ENGINE_PID" 2>/dev/null; then
        kill -TERM "$ENGINE_PID"
        local i
        for ((i = 0; i < 300; i++)); do
            kill -0 "$ENGINE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$ENGINE_PID" 2>/dev/null || true
    fi
    ENGINE_PID=
    local pid
    for pid in $(engine_leftovers); do
        [[ $pid == "$$" ]] || kill -KILL "$pid" 2>/dev/null || true
    done
}

# Everything a run needs, in order: the binary, its own engine, the
# examples image on it, and the server (arguments go to server_start).
start_all() {
    build
    engine_start
    build_image
    server_start "$@"
}

# server_start [ARGS…]: a server on $PORT (kept across restarts: a server
# that comes back on its address takes its tasks over), HTTP on $HTTP_PORT,
# config $FAULT_DIR/server.toml if there is one. Waits until /healthz
# answers.
server_start() {
    [[ -n $PORT ]] || PORT=$(free_port)
    [[ -n $HTTP_PORT ]] || HTTP_PORT=$(free_port)
    local config=()
    [[ -f $FAULT_DIR/server.toml ]] && config=(--config "$FAULT_DIR/server.toml")
    # Its journal of queued tasks lives (and goes) with the run's directory.
    STATE_DIRECTORY="$FAULT_DIR/state" \
        "$BIN" serve --listen "127.0.0.1:$PORT" --http "127.0.0.1:$HTTP_PORT" "${config[@]}" "$@" \
        >>"$FAULT_DIR/server.log" 2>&1 &
    SERVER_PID=$!
    local i
    for ((i = 0; i < 600; i++)); do
        if curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "the server did not start; its log: $FAULT_DIR/server.log"
    tail -n 20 "$FAULT_DIR/server.log" >&2
    return 1
}

server_kill() {
    [[ -n $SERVER_PID ]] || return 0
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# A graceful stop (SIGTERM), waiting up to 60 s.
server_stop() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 600; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    server_kill
}

# The HTTP status of /readyz.
readyz() {
    curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/readyz" || true
}

# wait_for SECONDS 'CODE': evaluates CODE (quoted, so that its $(…) run
# each time) every 0.2 s until it succeeds; false if it never did.
wait_for() {
    local seconds=$1 code=$2 i
    for ((i = 0; i < seconds * 5; i++)); do
        eval "$code" && return 0
        sleep 0.2
    done
    return 1
}

# The containers of tcp-task (label tcp-task.managed) on the private engine.
managed_containers() {
    docker ps -aq --filter label=tcp-task.managed=true
}

# The examples image on the private engine (it starts empty).
build_image() {
    "$BIN" image build-examples >>"$FAULT_DIR/image.log" 2>&1
}

# Resident memory (kB) and open file descriptors of a process.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
open_fds() { ls "/proc/$1/fd" | wc -l; }

# Detached and attached `ticks` tasks whose output is known in advance,
# submitted through server restarts and checked afterwards (server-kills.sh,
# kills-and-engine.sh). Detached task i is `ticks N TICK_MS CODE`, N and
# CODE from i: its stdout is `out 0`…`out N-1`, its stderr `err 0`…, its
# exit CODE. An attached run is `ticks ATTACHED_TICKS ATTACHED_MS 3`.
TICKS_BASE=${TICKS_BASE:-4}
TICKS_SPREAD=${TICKS_SPREAD:-37}
TICK_MS=${TICK_MS:-60}
ATTACHED_TICKS=${ATTACHED_TICKS:-30}
ATTACHED_MS=${ATTACHED_MS:-250}
ticks_of() { echo $((TICKS_BASE + $1 % TICKS_SPREAD)); }
code_of() { echo $(($1 % 101)); }
expected() { # STREAM N: the sha256 of `STREAM 0`…`STREAM N-1`
    local i
    for ((i = 0; i < $2; i++)); do echo "$1 $i"; done | sha256sum | cut -c1-64
}

# submitter K: submits detached tasks K, K+SUBMITTERS, … below DETACHED,
# SUBMIT_GAP seconds apart; writes "i id" lines to ids.K. A submission
# refused (the server down) is retried: it was never accepted.
submitter() {
    local k=$1 i id tries
    for ((i = k; i < DETACHED; i += SUBMITTERS)); do
        for ((tries = 0; tries < 300; tries++)); do
            if id=$("$BIN" --server "127.0.0.1:$PORT" run -d "$IMAGE" ticks \
                "$(ticks_of "$i")" "$TICK_MS" "$(code_of "$i")" 2>>"$FAULT_DIR/submit.err"); then
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
    "$BIN" --server "127.0.0.1:$PORT" run "$IMAGE" ticks "$ATTACHED_TICKS" "$ATTACHED_MS" 3 \
        >"$FAULT_DIR/att.$j.out" 2>"$FAULT_DIR/att.$j.err" || status=$?
    echo "$status" >"$FAULT_DIR/att.$j.status"
}

# start_load GAP: starts the SUBMITTERS submitters (their PIDs in
# `submitters`), then the ATTACHED runs, GAP seconds apart.
start_load() {
    local gap=$1 k j
    for ((k = 0; k < SUBMITTERS; k++)); do
        submitter "$k" &
        JOBS+=($!)
    done
    submitters=("${JOBS[@]}")
    for ((j = 0; j < ATTACHED; j++)); do
        attached "$j" &
        JOBS+=($!)
        sleep "$gap"
    done
}

# await_tasks: waits for the submitters (their PIDs in `submitters`) and
# for every attached run's status (up to 300 s each).
await_tasks() {
    local pid j
    for pid in "${submitters[@]}"; do wait "$pid"; done
    log "all submissions done"
    for ((j = 0; j < ATTACHED; j++)); do
        wait_for 300 '[ -f "$FAULT_DIR/att.$j.status" ]' || true
    done
}

# start_held_task: while the engine is down, with engine_outage = "hold",
# a new `run` must wait for it; check_held_task: it ran once it was back.
start_held_task() {
    "$BIN" --server "127.0.0.1:$PORT" run "$IMAGE" echo while-down \
        >"$FAULT_DIR/down.out" 2>"$FAULT_DIR/down.err" &
    held_pid=$!
    JOBS+=("$held_pid")
    sleep 2
    check "a new task waits while the engine is down (held)" kill -0 "$held_pid"
}
check_held_task() {
    local held_status=0
    wait "$held_pid" || held_status=$?
    check "the held task ran once the engine was back" [ "$held_status" = 0 ]
    check "and printed its line" grep -qx 'while-down' "$FAULT_DIR/down.out"
}

# check_detached: every submitted detached task (ids.*) is asked for its
# `wait` (exit code) and `logs` (sha256 of stdout and of stderr), and
# counted in one of: intact; engine_kept, not intact but exactly what the
# engine kept of its container (`docker logs`, `docker inspect`; a warm
# container's log is its agent's frames, so a warm task is not compared
# and counts here only as the error saying the engine did not keep its
# end), only with ENGINE_KEPT=1, where the engine was restarted; no_such (`wait` says
# there is no such task: lost, but said so); other_error (another clear
# error); wrong (a result that is neither, or a hang). Sets submitted and
# refused too.
check_detached() {
    cat "$FAULT_DIR"/ids.* | sort -n >"$FAULT_DIR/ids"
    submitted=$(wc -l <"$FAULT_DIR/ids")
    # No file when no submission was refused (pipefail would end the script).
    refused=0
    [[ -f $FAULT_DIR/refused ]] && refused=$(wc -l <"$FAULT_DIR/refused")
    intact=0 engine_kept=0 no_such=0 other_error=0 wrong=0
    local i id n status rc out err container engine_code engine_out engine_err lines
    while read -r i id; do
        n=$(ticks_of "$i")
        set +e
        status=$(timeout 300 "$BIN" --server "127.0.0.1:$PORT" wait "$id" 2>"$FAULT_DIR/wait.err")
        rc=$?
        set -e
        if [[ $rc != 0 ]]; then
            if grep -q 'no task' "$FAULT_DIR/wait.err" || grep -qi 'NoSuchTask' "$FAULT_DIR/wait.err"; then
                no_such=$((no_such + 1))
            elif [[ ${ENGINE_KEPT:-0} == 1 ]] && grep -q 'the Docker engine did not keep how' "$FAULT_DIR/wait.err"; then
                # A warm task that ended while the engine was down: its
                # end (in its agent's frames) is not in the engine's log.
                engine_kept=$((engine_kept + 1))
            elif [[ $rc != 124 ]] && grep -q 'tcp-task: ' "$FAULT_DIR/wait.err"; then
                other_error=$((other_error + 1))
            else
                wrong=$((wrong + 1))
            fi
            log "task $i ($id): wait exit $rc: $(cat "$FAULT_DIR/wait.err")"
            continue
        fi
        timeout 60 "$BIN" --server "127.0.0.1:$PORT" logs "$id" \
            >"$FAULT_DIR/t.out" 2>"$FAULT_DIR/t.err" || true
        out=$(sha256sum <"$FAULT_DIR/t.out" | cut -c1-64)
        err=$(sha256sum <"$FAULT_DIR/t.err" | cut -c1-64)
        lines="$(wc -l <"$FAULT_DIR/t.out")/$n stdout lines, $(wc -l <"$FAULT_DIR/t.err")/$n stderr lines"
        if [[ $status == "$(code_of "$i")" && $out == "$(expected out "$n")" && $err == "$(expected err "$n")" ]]; then
            intact=$((intact + 1))
            continue
        fi
        if [[ ${ENGINE_KEPT:-0} == 1 ]]; then
            container=$(docker ps -aq --filter "label=tcp-task.id=$id")
            engine_code=none engine_out=none engine_err=none
            : >"$FAULT_DIR/e.out"
            if [[ -n $container ]]; then
                docker logs "$container" >"$FAULT_DIR/e.out" 2>"$FAULT_DIR/e.err" || true
                engine_code=$(docker inspect -f '{{.State.ExitCode}}' "$container" 2>/dev/null || echo none)
                engine_out=$(sha256sum <"$FAULT_DIR/e.out" | cut -c1-64)
                engine_err=$(sha256sum <"$FAULT_DIR/e.err" | cut -c1-64)
            fi
            if [[ $status == "$engine_code" && $out == "$engine_out" && $err == "$engine_err" ]]; then
                engine_kept=$((engine_kept + 1))
                log "task $i ($id): exit $status (want $(code_of "$i")), $lines: as the engine kept it"
                continue
            fi
            log "task $i ($id): the engine says exit $engine_code, $(wc -l <"$FAULT_DIR/e.out" 2>/dev/null) stdout lines"
        fi
        wrong=$((wrong + 1))
        log "task $i ($id): exit $status (want $(code_of "$i")), $lines"
    done <"$FAULT_DIR/ids"
}

# check_attached: every attached run's exit status and output, counted as
# att_intact (exit 3 and all of its output, resumed across the restarts),
# att_error (exit 125 with the CLI's message) or att_wrong (anything else,
# or still running).
check_attached() {
    att_intact=0 att_error=0 att_wrong=0
    local want_out want_err j status out err
    want_out=$(expected out "$ATTACHED_TICKS")
    want_err=$(expected err "$ATTACHED_TICKS")
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
            log "attached $j: exit $status, $(wc -l <"$FAULT_DIR/att.$j.out")/$ATTACHED_TICKS stdout lines"
        fi
    done
}

cleanup() {
    local status=$?
    set +e
    local pid
    for pid in "${JOBS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
    done
    server_kill
    engine_stop
    local command
    for command in "${CLEANUPS[@]}"; do
        eval "$command"
    done
    # Mounts the engine left (container root filesystems, netns, shm).
    grep -F " $FAULT_DIR/" /proc/mounts | awk '{print $2}' | sort -r |
        while read -r mount; do umount -l "$mount"; done
    if [[ ${KEEP:-0} == 1 ]]; then
        log "kept $FAULT_DIR"
    else
        rm -rf "$FAULT_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

finish() {
    echo "$(basename "$0"): $PASSED passed, $FAILED failed"
    ((FAILED == 0))
}
