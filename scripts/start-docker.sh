#!/usr/bin/env bash
# Makes sure a Docker engine answers, for tcp-task's tests and demo.
#
# Does nothing when the engine at DOCKER_HOST (or the local socket) answers
# `docker info` within ENGINE_ANSWER_SECS. Otherwise installs Debian's
# docker.io if dockerd is missing and starts dockerd (through systemd when
# systemd runs, else in the background with its log in $DOCKERD_LOG).
#
# An engine that is running but hung (seen here: Debian's 20.10 deadlocked
# inside libnetwork, every call waiting forever) is never stopped: this
# script is not its owner. Instead it starts an engine of its own beside it
# (own data-root, exec-root and socket under $PRIVATE_ENGINE_DIR) and prints
# that engine's address on stdout, for the caller to use as DOCKER_HOST:
#
#     host=$(bash scripts/start-docker.sh) && [[ -n $host ]] && export DOCKER_HOST=$host
#
# `start-docker.sh --private` starts (or finds) that engine of its own in any
# case: for a checkout whose tests should not share the machine's engine (its
# images, its load) with another checkout's. Stop it with
# `kill $(cat $PRIVATE_ENGINE_DIR/docker.pid)`.
#
# Needs root for the install and the start. Used by scripts/test.sh (so CI)
# and the README.
set -euo pipefail

log=${DOCKERD_LOG:-/var/log/dockerd.log}
wait_secs=${DOCKERD_WAIT_SECS:-60}
answer_secs=${ENGINE_ANSWER_SECS:-20}
private=${PRIVATE_ENGINE_DIR:-/tmp/tcp-task-engine}

answers() {
    timeout --kill-after=5 "$answer_secs" docker "$@" info >/dev/null 2>&1
}

wait_for() {
    local what=$1 log=$2
    shift 2
    for ((i = 0; i < wait_secs; i++)); do
        if answers "$@"; then
            echo "start-docker: $what ready after ${i}s" >&2
            return 0
        fi
        sleep 1
    done
    echo "start-docker: $what did not answer within ${wait_secs}s; its last log lines:" >&2
    tail -n 30 "$log" >&2 2>/dev/null || true
    return 1
}

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "start-docker: $1; starting an engine needs root, run: sudo $0" >&2
        exit 1
    fi
}

# A second engine, for when the machine's one is running but does not answer.
start_private_engine() {
    local host="unix://$private/docker.sock"
    if answers -H "$host"; then
        echo "$host"
        return 0
    fi
    mkdir -p "$private"
    # No bridge and no iptables rules of its own: the machine's engine owns
    # docker0 and the NAT chains. Containers that need a network get one the
    # tests create.
    echo '{}' >"$private/daemon.json"
    echo "start-docker: starting a private engine at $host (log: $private/dockerd.log)" >&2
    setsid nohup dockerd --config-file "$private/daemon.json" \
        --data-root "$private/data" --exec-root "$private/exec" \
        -H "$host" --pidfile "$private/docker.pid" \
        --bridge none --iptables=false --ip-masq=false \
        >>"$private/dockerd.log" 2>&1 </dev/null &
    wait_for "the private engine" "$private/dockerd.log" -H "$host"
    echo "$host"
}

if [[ ${1:-} == --private ]]; then
    need_root "a private engine was asked for"
    start_private_engine
    exit 0
fi

if answers; then
    exit 0
fi

if [[ -z ${DOCKER_HOST:-} || $DOCKER_HOST == unix:///var/run/docker.sock ]] &&
    [[ -S /var/run/docker.sock ]] && pgrep -x dockerd >/dev/null 2>&1; then
    need_root "the machine's Docker engine is running but did not answer within ${answer_secs}s"
    echo "start-docker: the machine's Docker engine is running but did not answer within ${answer_secs}s; leaving it alone" >&2
    start_private_engine
    exit 0
fi

need_root "the Docker engine is not answering"

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    echo "start-docker: installing Debian's docker.io" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

if [[ -d /run/systemd/system ]] && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker
else
    echo "start-docker: starting dockerd in the background (log: $log)" >&2
    nohup dockerd >>"$log" 2>&1 </dev/null &
fi
wait_for "engine" "$log"
