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
# both throughputs and their ratio.
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

start_all
log "server $SERVER_PID on 127.0.0.1:$PORT: $TASKS tasks at once over 16 connections (window $window)"

json=$FAULT_DIR/burst.json
tcp bench load --connections 16 --window "$window" --tasks "$TASKS" --json "$IMAGE" echo burst \
    >"$json" 2>"$FAULT_DIR/burst.err" || true
log "tcp-task: $(jq -c '{tasks, completed, lost, duplicated, wrong, stray, errors, elapsed_s, tasks_per_second, p50_ms, p99_ms}' "$json")"
check "every task completed once" [ "$(jq '.completed == .tasks' "$json")" = true ]
check "nothing lost, duplicated, wrong or stray" [ "$(jq '.lost + .duplicated + .wrong + .stray' "$json")" = 0 ]
check "none refused, no errors at all" [ "$(jq '.errors | length' "$json")" = 0 ]
check "no task container left once the pools are drained" wait_for 60 \
    '[ "$(docker ps -aq --filter label=tcp-task.managed=true --filter status=exited | wc -l)" = 0 ]'

started=$(date +%s.%N)
seq "$TASKS" | xargs -P "$PARALLEL" -I{} docker run --rm --network none "$IMAGE" echo burst \
    >"$FAULT_DIR/docker.out" 2>"$FAULT_DIR/docker.err" || true
ended=$(date +%s.%N)
docker_ok=$(grep -c '^burst$' "$FAULT_DIR/docker.out" || true)
check "every docker run printed its line" [ "$docker_ok" = "$TASKS" ]

server_stop
check "no container left after the server's graceful stop" wait_for 30 '[ -z "$(managed_containers)" ]'

ours=$(jq -r '.tasks_per_second * 100 | round / 100' "$json")
theirs=$(awk -v n="$TASKS" -v a="$started" -v b="$ended" 'BEGIN { printf "%.2f", n / (b - a) }')
ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }')
echo "burst: $TASKS single-use tasks at once: tcp-task $ours tasks/s (p50 $(jq -r '.p50_ms | round' "$json") ms, p99 $(jq -r '.p99_ms | round' "$json") ms); docker run --rm x$PARALLEL $theirs tasks/s; ratio $ratio; load average $(cut -d' ' -f1-3 /proc/loadavg)"
finish
