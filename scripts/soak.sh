#!/usr/bin/env bash
# Soak: TASKS (10,000) tasks over 64 connections against a real server and
# engine, the server's memory and file descriptors sampled all along.
#
# Starts its own dockerd (never the machine's; see scripts/faults/lib.sh),
# builds the examples image on it, starts `tcp-task serve` with the `sum`
# catalog task on WARM (8) warm containers that are reused, and no
# on-demand pools (so generic tasks stay cold), then runs at once:
# - `bench load --task sum 1 2 3` over 60 connections: most of the tasks,
#   on reused warm containers;
# - `bench load IMAGE echo cold` over 4 connections: COLD_PERCENT (5) % of
#   the tasks, each a new single-use container.
# Both offer their share of RATE (40) tasks/s in all (`--rate`, an open
# loop: latency counts from each task's scheduled start); RATE=0 runs them
# as fast as their windows allow instead (a closed loop, whose latency is
# queueing: tasks in flight divided by throughput).
# The server's RSS and open fds (from /proc/PID) and the engine's
# containers are sampled every SAMPLE_SECS (2) into samples.csv.
#
# Checks: every task ended once with the same output (the load tool's
# counts: nothing lost, duplicated, wrong or stray, no error); no growth
# after the warm-up (the first third of the run): the highest RSS of the
# last third is within GROWTH (1.25) times that of the middle third, and
# its highest fd count within 16 of the middle third's; no leaked
# container: once the loads end only the warm pool's containers are left,
# and none after the server's graceful stop.
#
#   sudo flock /tmp/heavy.lock bash scripts/soak.sh
#   TASKS=2000 sudo flock /tmp/heavy.lock bash scripts/soak.sh
#
# Prints the figures and `N passed, M failed`; KEEP=1 keeps its directory
# (samples.csv, the loads' JSON, the logs).
source "$(dirname "$0")/faults/lib.sh"

TASKS=${TASKS:-10000}
COLD_PERCENT=${COLD_PERCENT:-5}
WARM=${WARM:-8}
SAMPLE_SECS=${SAMPLE_SECS:-2}
GROWTH=${GROWTH:-1.25}
RATE=${RATE:-40}
cold_tasks=$((TASKS * COLD_PERCENT / 100))
warm_tasks=$((TASKS - cold_tasks))
# Each load's `--rate` flag: its share of RATE.
rate_of() { # TASKS
    if [[ $RATE == 0 ]]; then return; fi
    awk -v r="$RATE" -v n="$1" -v all="$TASKS" 'BEGIN { printf "--rate %.3f", r * n / all }'
}

cat >"$FAULT_DIR/server.toml" <<EOF
[executor.warm]
demand_threshold = 0

[catalog.sum]
image = "$IMAGE"
command = ["sum"]
warm = $WARM
reuse = 1000000
EOF

start_all
wait_for 120 '[ "$(tcp task sum 1 2 2>/dev/null)" = 3 ]'
log "server $SERVER_PID on 127.0.0.1:$PORT: $warm_tasks warm + $cold_tasks cold tasks"

sampler() {
    echo "seconds,rss_kb,fds,containers"
    local start=$SECONDS
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        echo "$((SECONDS - start)),$(rss_kb "$SERVER_PID"),$(open_fds "$SERVER_PID"),$(docker ps -q | wc -l)"
        sleep "$SAMPLE_SECS"
    done
}
sampler >"$FAULT_DIR/samples.csv" 2>/dev/null &
JOBS+=($!)
sampler_pid=$!

started=$SECONDS
# shellcheck disable=SC2046 # rate_of gives two words, or none
tcp bench load --connections 60 --tasks "$warm_tasks" $(rate_of "$warm_tasks") --json --task sum 1 2 3 \
    >"$FAULT_DIR/warm.json" 2>"$FAULT_DIR/warm.err" &
warm_pid=$!
JOBS+=($warm_pid)
# shellcheck disable=SC2046
tcp bench load --connections 4 --tasks "$cold_tasks" $(rate_of "$cold_tasks") --json "$IMAGE" echo cold \
    >"$FAULT_DIR/cold.json" 2>"$FAULT_DIR/cold.err" &
cold_pid=$!
JOBS+=($cold_pid)
wait "$warm_pid" || true
wait "$cold_pid" || true
elapsed=$((SECONDS - started))
sleep "$SAMPLE_SECS"
kill "$sampler_pid" 2>/dev/null || true

for kind in warm cold; do
    json=$FAULT_DIR/$kind.json
    log "$kind: $(jq -c '{tasks, completed, lost, duplicated, wrong, stray, errors, tasks_per_second, p50_ms, p99_ms, max_ms}' "$json")"
    check "$kind: every task completed once" [ "$(jq '.completed == .tasks' "$json")" = true ]
    check "$kind: nothing lost, duplicated, wrong or stray" \
        [ "$(jq '.lost + .duplicated + .wrong + .stray' "$json")" = 0 ]
    check "$kind: no errors" [ "$(jq '.errors | length' "$json")" = 0 ]
done

# Growth: the run's thirds, by sample.
read -r rss_mid rss_end fds_mid fds_end samples <<<"$(awk -F, 'NR > 1 { rss[n] = $2; fds[n] = $3; n++ }
    END {
        a = int(n / 3); b = int(2 * n / 3)
        for (i = a; i < b; i++) { if (rss[i] > rm) rm = rss[i]; if (fds[i] > fm) fm = fds[i] }
        for (i = b; i < n; i++) { if (rss[i] > re) re = rss[i]; if (fds[i] > fe) fe = fds[i] }
        print rm + 0, re + 0, fm + 0, fe + 0, n
    }' "$FAULT_DIR/samples.csv")"
log "samples $samples; RSS max middle third $rss_mid kB, last third $rss_end kB; fds $fds_mid, $fds_end"
check "RSS flat after the warm-up (last third within $GROWTH x the middle third)" \
    awk -v m="$rss_mid" -v e="$rss_end" -v g="$GROWTH" 'BEGIN { exit !(m > 0 && e <= m * g) }'
check "fds flat after the warm-up (last third within 16 of the middle third)" \
    [ "$fds_end" -le "$((fds_mid + 16))" ]

# Leaks: once the loads are over, only the warm pool is left.
# Every managed container, with its warm label (empty: not a warm one).
containers() { docker ps -a --filter label=tcp-task.managed=true --format '{{.ID}} {{.State}} warm={{.Label "tcp-task.warm"}}'; }
leftover() { containers | grep -c ' warm=$' || true; }
warm_count() { containers | grep -vc ' warm=$' || true; }
check "no container but the warm pool's once the loads end" wait_for 30 '[ "$(leftover)" = 0 ]'
check "the warm pool holds at most $WARM containers" wait_for 30 '[ "$(warm_count)" -le "$WARM" ]'
containers >"$FAULT_DIR/containers.after"
log "containers after the loads: $(leftover) not warm, $(warm_count) warm"
rss_after=$(rss_kb "$SERVER_PID")
fds_after=$(open_fds "$SERVER_PID")
server_stop
check "no container left after the server's graceful stop" wait_for 30 '[ -z "$(managed_containers)" ]'

awk -F, 'NR == 2 { printf "first sample: RSS %d kB, %d fds\n", $2, $3 }
    NR > 1 { if ($2 > r) r = $2; if ($3 > f) f = $3 }
    END { printf "peak: RSS %d kB, %d fds\n", r, f }' "$FAULT_DIR/samples.csv" >&2
echo "soak: $TASKS tasks (offered ${RATE}/s, 0 = closed loop; $warm_tasks warm over 60 connections, $cold_tasks cold over 4) in $elapsed s; RSS middle/last third max $rss_mid/$rss_end kB, fds $fds_mid/$fds_end; after the loads RSS $rss_after kB, $fds_after fds; warm p99 $(jq .p99_ms "$FAULT_DIR/warm.json") ms; cold p99 $(jq .p99_ms "$FAULT_DIR/cold.json") ms; load average $(cut -d' ' -f1-3 /proc/loadavg)"
finish
