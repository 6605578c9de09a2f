#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or a developer's: starts
# what the tests need (a Docker engine; Debian's docker-registry and htpasswd
# for the private-registry tests; python3 for the Python client's tests;
# curl and prometheus for the HTTP listener's),
# then runs every test. .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

# The build needs about 2 GiB for its target directory (more with
# incremental state); say so up front rather than let the linker fail on a
# full disk halfway through.
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
free_mib=$(df -Pm "$target_dir" | awk 'NR == 2 { print $4 }')
if ((free_mib < 3072)); then
    echo "test: warning: only ${free_mib} MiB free under $target_dir; the build and the" \
        "tests' engines need about 3 GiB (free some: cargo clean elsewhere, docker system prune)" >&2
fi

# start-docker.sh prints an address only when it had to start an engine of
# its own beside a hung one: the tests then use that engine.
engine=$(bash scripts/start-docker.sh)
if [[ -n $engine ]]; then
    export DOCKER_HOST=$engine
    echo "test: using the engine at $DOCKER_HOST" >&2
fi

missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
# The Python client's tests (tests/python_client.rs) run it with python3.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# The HTTP listener's tests drive it with curl; tests/prometheus.rs has a
# real Prometheus scrape it.
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
    echo "test: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A program that links only the client builds without the server's
# dependencies (README: "The library by example").
cargo build --lib --no-default-features
if cargo tree -p tcp-task --no-default-features -e normal --prefix none |
    grep -E '^(bollard|clap|indicatif|tar|toml|hyper|hyper-util|prometheus-client) '; then
    echo "test: the client-only build pulls in server dependencies (above)" >&2
    exit 1
fi

# The Swarm backend's tests (tests/swarm_executor.rs) run on a two-node
# swarm of their own engines in network namespaces, never on the machine's
# engine; it is torn down when the tests end, unless it was up already.
swarm_was_up=0
if timeout 20 docker -H unix:///run/tcp-task-swarm/n1.sock info >/dev/null 2>&1; then
    swarm_was_up=1
fi
TCP_TASK_SWARM_HOST=$(bash scripts/swarm.sh up)
TCP_TASK_SWARM_NODES=$(bash scripts/swarm.sh nodes)
export TCP_TASK_SWARM_HOST TCP_TASK_SWARM_NODES
if ((!swarm_was_up)); then
    trap 'bash scripts/swarm.sh down' EXIT
fi

if cargo nextest --version >/dev/null 2>&1; then
    # Each test has its own time limit (.config/nextest.toml); this bounds the
    # whole run below CI's 90 minutes, so a stuck run still reports.
    timeout --kill-after=60 "${TEST_RUN_SECS:-4200}" \
        cargo nextest run --workspace --no-fail-fast "$@"
    # nextest does not run doctests (the README's examples among them).
    cargo test --workspace --doc
else
    cargo test --workspace --no-fail-fast "$@"
fi
