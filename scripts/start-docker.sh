#!/usr/bin/env bash
# Makes sure a Docker engine answers `docker info`, for tcp-task's tests and
# demo. Does nothing when one already does; otherwise installs Debian's
# docker.io if dockerd is missing, starts dockerd (through systemd when systemd
# runs, else in the background with its log in $DOCKERD_LOG) and waits for it.
# Needs root for the install and the start. Used by .ci/run and the README.
set -euo pipefail

log=${DOCKERD_LOG:-/var/log/dockerd.log}
wait_secs=${DOCKERD_WAIT_SECS:-60}

if docker info >/dev/null 2>&1; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "start-docker: the Docker engine is not answering and starting it needs root; run: sudo $0" >&2
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    echo "start-docker: installing Debian's docker.io" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

if [[ -d /run/systemd/system ]] && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker
else
    echo "start-docker: starting dockerd in the background (log: $log)" >&2
    nohup dockerd >>"$log" 2>&1 &
fi

for ((i = 0; i < wait_secs; i++)); do
    if docker info >/dev/null 2>&1; then
        echo "start-docker: engine ready after ${i}s" >&2
        exit 0
    fi
    sleep 1
done

echo "start-docker: dockerd did not answer within ${wait_secs}s; its last log lines:" >&2
tail -n 30 "$log" >&2 2>/dev/null || true
exit 1
