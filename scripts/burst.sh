#!/usr/bin/env bash
# Burst: TASKS (1,000) single-use tasks submitted at once, beside the same
# tasks as parallel `docker run --rm` on the same engine.
#
# Starts its own dockerd (never the machine's; see scripts/faults/lib.sh),
# builds the examples image on it and starts `tcp-task serve` with a queue
# long enough for the whole burst (`max_queue` = TASKS) and otherwise the
# default settings (max_concurrent 8; generic images get on-demand warm
# pools of single-use containers). Then:
# - `bench load --connections 16 --window W --tasks TASKS IMAGE echo burst`,
#   W = TASKS/16 rounded up, so every task is in flight from the start;
# - TASKS `docker run --rm --network none IMAGE echo burst`, PARALLEL (8) at
#   a time (xargs -P), timed, on the same engine.
#
# Checks: every task completed once with the same output, none refused
# (no errors at all), none lost or duplicated, no container left. Prints
# both throughputs and their ratio, and the CPU each spent per task
# (dockerd, containerd, the server; the whole machine, which counts
# whatever else runs too).
#
#   sudo flock /tmp/heavy.lock bash scripts/burst.sh
#   TASKS=200 sudo flock /tmp/heavy.lock bash scripts/burst.sh
source "$(dirname "$0")/faults/lib.sh"

TASKS=${TASKS:-1000}
PARALLEL=${PARALLEL:-8}
window=$(((TASKS + 15) / 16))

cat >"$FAULT_DIR/server.toml" <<TOML
[executor]
max_queue = $TASKS
TOML

# CPU time (ms) that the engine's dockerd and containerd, and the server,
# have used so far; and all the machine's CPUs (not only this run's).
tick_ms=$((1000 / $(getconf CLK_TCK)))
cpu_ms() { awk -v t="$tick_ms" '{print ($14 + $15) * t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
machine_ms() { awk -v t="$tick_ms" '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) * t}' /proc/stat; }
containerd_pid() { pgrep -P "$ENGINE_PID" -x containerd | head -1; }
# "dockerd containerd server machine" CPU ms so far.
cpu_sample() {
    echo "$(cpu_ms "$ENGINE_PID") $(cpu_ms "$(containerd_pid)") $(cpu_ms "${SERVER_PID:-0}") $(machine_ms)"
}
# per_task BEFORE AFTER: CPU ms per task of each, between two samples.
per_task() {
    awk -v n="$TASKS" -v a="$1" -v b="$2" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        printf "dockerd %.1f, containerd %.1f, server %.1f, whole machine %.1f CPU ms per task",
            (y[1] - x[1]) / n, (y[2] - x[2]) / n, (y[3] - x[3]) / n, (y[4] - x[4]) / n }'
}

start_all
log "server $SERVER_PID on 127.0.0.1:$PORT: $TASKS tasks at once over 16 connections (window $window)"

json=$FAULT_DIR/burst.json
before_ours=$(cpu_sample)
tcp bench load --connections 16 --window "$window" --tasks "$TASKS" --json "$IMAGE" echo burst \
    >"$json" 2>"$FAULT_DIR/burst.err" || true
after_ours=$(cpu_sample)
log "tcp-task: $(jq -c '{tasks, completed, lost, duplicated, wrong, stray, errors, elapsed_s, tasks_per_second, p50_ms, p99_ms}' "$json")"
check "every task completed once" [ "$(jq '.completed == .tasks' "$json")" = true ]
check "nothing lost, duplicated, wrong or stray" [ "$(jq '.lost + .duplicated + .wrong + .stray' "$json")" = 0 ]
check "none refused, no errors at all" [ "$(jq '.errors | length' "$json")" = 0 ]
check "no task container left once the pools are drained" wait_for 60 \
    '[ "$(docker ps -aq --filter label=tcp-task.managed=true --filter status=exited | wc -l)" = 0 ]'

before_theirs=$(cpu_sample)
started=$(date +%s.%N)
seq "$TASKS" | xargs -P "$PARALLEL" -I{} docker run --rm --network none "$IMAGE" echo burst \
    >"$FAULT_DIR/docker.out" 2>"$FAULT_DIR/docker.err" || true
ended=$(date +%s.%N)
after_theirs=$(cpu_sample)
docker_ok=$(grep -c '^burst$' "$FAULT_DIR/docker.out" || true)
check "every docker run printed its line" [ "$docker_ok" = "$TASKS" ]

server_stop
check "no container left after the server's graceful stop" wait_for 30 '[ -z "$(managed_containers)" ]'

ours=$(jq -r '.tasks_per_second * 100 | round / 100' "$json")
theirs=$(awk -v n="$TASKS" -v a="$started" -v b="$ended" 'BEGIN { printf "%.2f", n / (b - a) }')
ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }')
log "tcp-task: $(per_task "$before_ours" "$after_ours")"
log "docker run: $(per_task "$before_theirs" "$after_theirs") (the server idles meanwhile)"
echo "burst: $TASKS single-use tasks at once: tcp-task $ours tasks/s (p50 $(jq -r '.p50_ms | round' "$json") ms, p99 $(jq -r '.p99_ms | round' "$json") ms); docker run --rm x$PARALLEL $theirs tasks/s; ratio $ratio; load average $(cut -d' ' -f1-3 /proc/loadavg)"
finish
