#!/usr/bin/env bash
# A Docker Swarm of its own for the Swarm backend's tests, that never
# touches the machine's engine: two dockerds, each in a network namespace
# this script creates, joined by a veth pair on a private subnet that exists
# only between those namespaces. Node 1 is the manager, node 2 a worker.
#
#   bash scripts/swarm.sh up     # idempotent; prints the manager's DOCKER_HOST
#   bash scripts/swarm.sh down   # stops both engines, removes their state
#
# The tests find the swarm through TCP_TASK_SWARM_HOST (the manager's
# socket) and TCP_TASK_SWARM_NODES (every node's socket, space-separated);
# scripts/test.sh sets both. The engines pull nothing: the tests build the
# images they need on each node (src/images.rs).
#
# Why nsenter and not `ip netns exec`: the latter remounts /sys for the
# namespace, which hides the cgroup mounts dockerd needs.
set -euo pipefail

base=${TCP_TASK_SWARM_DIR:-/run/tcp-task-swarm}
data=${TCP_TASK_SWARM_DATA:-/var/lib/tcp-task-swarm}
prefix=ttswarm
subnet=10.211.7
nodes=(1 2)
wait_secs=60

sock() { echo "unix://$base/n$1.sock"; }
# Every call has a time limit: an engine that hangs must fail the run, not
# hold it.
dk() { local n=$1; shift; timeout --kill-after=5 60 docker -H "$(sock "$n")" "$@"; }

netns_up() {
    local n=$1 ns=$prefix-$1
    ip netns list | grep -qw "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
}

link_up() {
    # One veth pair, an end in each namespace.
    if ! ip -n $prefix-1 link show veth-$prefix >/dev/null 2>&1; then
        ip link add veth-$prefix-a type veth peer name veth-$prefix-b
        ip link set veth-$prefix-a netns $prefix-1 name veth-$prefix
        ip link set veth-$prefix-b netns $prefix-2 name veth-$prefix
        ip -n $prefix-1 addr add $subnet.1/24 dev veth-$prefix
        ip -n $prefix-2 addr add $subnet.2/24 dev veth-$prefix
    fi
    ip -n $prefix-1 link set veth-$prefix up
    ip -n $prefix-2 link set veth-$prefix up
}

engine_up() {
    local n=$1
    if dk "$n" info >/dev/null 2>&1; then
        return
    fi
    mkdir -p "$base" "$data/n$n"
    # Its own config file: the machine's /etc/docker/daemon.json names the
    # machine's data-root.
    local driver
    driver=$(timeout --kill-after=5 20 docker info --format '{{.Driver}}' 2>/dev/null || echo vfs)
    cat >"$base/n$n.json" <<EOF
{"storage-driver": "$driver", "mtu": 1400, "bip": "172.31.$n.1/24"}
EOF
    # Its own host name too (a UTS namespace), so the nodes' names differ.
    # setsid: the engines outlive the shell that started them.
    setsid nsenter --net=/run/netns/$prefix-$n \
        unshare --uts sh -c 'hostname "$0"; exec "$@"' "$prefix-$n" \
        dockerd --config-file "$base/n$n.json" \
        --data-root "$data/n$n" --exec-root "$base/exec-n$n" \
        -H "$(sock "$n")" --pidfile "$base/n$n.pid" \
        >>"$base/n$n.log" 2>&1 &
    for ((i = 0; i < wait_secs; i++)); do
        if dk "$n" info >/dev/null 2>&1; then
            return
        fi
        sleep 1
    done
    echo "swarm: the engine of node $n did not answer within ${wait_secs}s; its log:" >&2
    tail -n 30 "$base/n$n.log" >&2 || true
    exit 1
}

swarm_up() {
    if [[ $(dk 1 info --format '{{.Swarm.LocalNodeState}}') != active ]]; then
        dk 1 swarm init --advertise-addr $subnet.1 >/dev/null
    fi
    if [[ $(dk 2 info --format '{{.Swarm.LocalNodeState}}') != active ]]; then
        local token
        token=$(dk 1 swarm join-token -q worker)
        dk 2 swarm join --token "$token" --advertise-addr $subnet.2 $subnet.1:2377 >/dev/null
    fi
    for ((i = 0; i < wait_secs; i++)); do
        if [[ $(dk 1 node ls --filter role=worker --format '{{.Status}}') == Ready ]]; then
            return
        fi
        sleep 1
    done
    echo "swarm: the worker did not become ready within ${wait_secs}s" >&2
    dk 1 node ls >&2 || true
    exit 1
}

up() {
    for n in "${nodes[@]}"; do netns_up "$n"; done
    link_up
    for n in "${nodes[@]}"; do engine_up "$n"; done
    swarm_up
    sock 1
}

down() {
    for n in "${nodes[@]}"; do
        local pidfile=$base/n$n.pid
        if [[ -f $pidfile ]]; then
            local pid
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for ((i = 0; i < 30; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 1
            done
        fi
    done
    for n in "${nodes[@]}"; do
        ip netns del $prefix-$n 2>/dev/null || true
    done
    # Mounts an engine leaves under its roots (none after a clean stop).
    grep -E " ($data|$base)/" /proc/mounts | awk '{print $2}' | sort -r |
        xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$base" "$data"
}

case ${1:-up} in
up) up ;;
down) down ;;
nodes) for n in "${nodes[@]}"; do printf '%s ' "$(sock "$n")"; done; echo ;;
*)
    echo "usage: $0 up|down|nodes" >&2
    exit 2
    ;;
esac
