#!/usr/bin/env bash
# Fault: misbehaving clients, all at once, beside a well-behaved one.
#
# Starts its own dockerd (never the machine's), builds the examples image
# on it, starts `tcp-task serve` with `max_connections` = MAX_CONNECTIONS
# (5200) and the `sum` catalog task on warm, reused containers, raises the
# fd limit (ulimit -n) for itself and the server, then:
# 1. baseline: the well-behaved client, `bench load --task sum 1 2 3`,
#    LOAD_TASKS (400) tasks over 4 connections, alone;
# 2. IDLE (5000) connections that shake hands and sit idle
#    (scripts/faults/clients.py), then the same load again while, for its
#    whole run, clients vanish mid-stream (RST), half-open connections
#    pile up (a partial hello; a FIN after a submit), clients that never
#    read hold 20 MB tasks, and FLOOD (1000) connections try to get past
#    max_connections.
# Checks: the server stays up; every load task ends once with the same
# output (nothing lost, duplicated or wrong, no error) in both runs; the
# flood past max_connections is refused; the well-behaved client's p99
# under the faults is within RATIO (5) times its baseline p99 (both
# figures printed); the server's fds come back down once the clients go.
#
#   sudo flock /tmp/heavy.lock bash scripts/faults/clients.sh
#
# Prints the figures and `N passed, M failed`.
source "$(dirname "$0")/lib.sh"

IDLE=${IDLE:-5000}
FLOOD=${FLOOD:-1000}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-5200}
LOAD_TASKS=${LOAD_TASKS:-400}
RATIO=${RATIO:-5}

ulimit -n "$(ulimit -Hn)"
cat >"$FAULT_DIR/server.toml" <<EOF
[server]
max_connections = $MAX_CONNECTIONS

[catalog.sum]
image = "$IMAGE"
command = ["sum"]
warm = 4
reuse = 1000000
EOF

start_all
wait_for 120 '[ "$(tcp task sum 1 2 2>/dev/null)" = 3 ]'
log "server $SERVER_PID on 127.0.0.1:$PORT (fd limit $(ulimit -n)), $(open_fds "$SERVER_PID") fds"

load() { # NAME
    tcp bench load --connections 4 --tasks "$LOAD_TASKS" --json --task sum 1 2 3 \
        >"$FAULT_DIR/$1.json" 2>"$FAULT_DIR/$1.err" || true
    log "$1: $(jq -c '{completed, lost, duplicated, wrong, errors, tasks_per_second, p50_ms, p99_ms, max_ms}' "$FAULT_DIR/$1.json")"
}
load baseline
fds_before=$(open_fds "$SERVER_PID")

python3 "$(dirname "$0")/clients.py" "127.0.0.1:$PORT" "$IMAGE" "$FAULT_DIR" "$IDLE" "$FLOOD" 3600 \
    >"$FAULT_DIR/clients.json" 2>"$FAULT_DIR/clients.err" &
clients_pid=$!
JOBS+=($clients_pid)
wait_for 300 '[ -f "$FAULT_DIR/ready" ]'
log "$IDLE idle connections open: server $(open_fds "$SERVER_PID") fds, RSS $(rss_kb "$SERVER_PID") kB"
# The load connects first, then the faults start.
tcp bench load --connections 4 --tasks "$LOAD_TASKS" --json --task sum 1 2 3 \
    >"$FAULT_DIR/faulted.json" 2>"$FAULT_DIR/faulted.err" &
load_pid=$!
JOBS+=($load_pid)
sleep 1
touch "$FAULT_DIR/go"
peak_fds=0 peak_rss=0
while kill -0 "$load_pid" 2>/dev/null; do
    fds=$(open_fds "$SERVER_PID" 2>/dev/null || echo 0)
    rss=$(rss_kb "$SERVER_PID" 2>/dev/null || echo 0)
    ((fds > peak_fds)) && peak_fds=$fds
    ((rss > peak_rss)) && peak_rss=$rss
    sleep 0.5
done
log "faulted: $(jq -c '{completed, lost, duplicated, wrong, errors, tasks_per_second, p50_ms, p99_ms, max_ms}' "$FAULT_DIR/faulted.json")"
log "during the faults: server peak $peak_fds fds, RSS $peak_rss kB"
# Stop the misbehaving clients (they print their counts and close their
# sockets), then watch the server let go of their connections.
touch "$FAULT_DIR/stop"
wait "$clients_pid" 2>/dev/null || true
log "clients: $(cat "$FAULT_DIR/clients.json")"
check "the server is up" kill -0 "$SERVER_PID"
check "fds back within 32 of the baseline once the clients are gone" \
    wait_for 60 '[ "$(open_fds "$SERVER_PID")" -le "$((fds_before + 32))" ]'
refused=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^tcptask_connections_refused_total.*max_connections/ {n += $2} END {print n + 0}')
log "connections refused (tcptask_connections_refused_total): $refused; $(head -c 400 "$FAULT_DIR/clients.err")"

for run in baseline faulted; do
    json=$FAULT_DIR/$run.json
    check "$run: every task completed once, same output, no error" \
        [ "$(jq '.completed == .tasks and .lost + .duplicated + .wrong + .stray == 0 and (.errors | length) == 0' "$json")" = true ]
done
check "the flood past max_connections was refused" [ "$refused" -gt 0 ]
base=$(jq .p99_ms "$FAULT_DIR/baseline.json")
faulted=$(jq .p99_ms "$FAULT_DIR/faulted.json")
ratio=$(awk -v a="$faulted" -v b="$base" 'BEGIN { printf "%.2f", a / b }')
check "p99 under the faults within $RATIO x the baseline's ($ratio)" \
    awk -v r="$ratio" -v m="$RATIO" 'BEGIN { exit !(r <= m) }'
server_stop
check "no container left after the server's shutdown" wait_for 30 '[ -z "$(managed_containers)" ]'

echo "clients: baseline p50 $(jq .p50_ms "$FAULT_DIR/baseline.json") ms p99 $base ms; with $IDLE idle + RST, half-open, never-read clients and a flood of $FLOOD: p50 $(jq .p50_ms "$FAULT_DIR/faulted.json") ms p99 $faulted ms (p99 ratio $ratio); refused $refused; peak $peak_fds fds, RSS $peak_rss kB"
finish
