"""``python3 -m tcp_task_client``: run tasks like ``tcp-task run``.

Output streams live, byte for byte; the exit status follows docs/PROTOCOL.md,
"Exit statuses for a command-line client" (the task's own status, 128+N for
signal N, 124 on timeout, 125/126/127 when it could not run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from typing import List, Optional

from . import wire
from .client import Client, RemoteError, Task, TcpTaskError, tls_context
from .wire import Ending, Output, OutputStream, TaskSpec

PROG = "tcp-task-client"
EXIT_FAILURE = 125
SIGPIPE = 13


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def parse_duration(text: str) -> float:
    """``30s``, ``500ms``, ``2m``, ``1h`` or plain seconds → seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (30s, 500ms, 2m)")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def parse_size(text: str) -> int:
    """Bytes, or with a unit: ``b``, ``k``, ``m``, ``g`` (powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([bkmg])?i?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (64m, 1g, 1048576)")
    scale = {None: 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)]
    return int(float(m.group(1)) * scale)


def key_value(flag: str):
    def parse(text: str):
        key, sep, value = text.partition("=")
        if flag == "-e" and not sep:
            if key not in os.environ:
                raise argparse.ArgumentTypeError(
                    f"-e {text}: no such variable in this environment; use -e {text}=VALUE"
                )
            return key, os.environ[key]
        if not key or not sep:
            raise argparse.ArgumentTypeError(f"{flag} {text}: expected KEY=VALUE")
        return key, value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m tcp_task_client",
        description="Run containers on a remote tcp-task server, like `tcp-task run`.",
        epilog="Exit status of run and task: the task's own; 128+N when signal N killed it "
        "(137 also when it ran out of memory); 124 when --timeout killed it; 130/143 when "
        "you interrupted it; 125 when the server, the engine or the command line failed; "
        "126 when the command cannot be run; 127 when it is not found.",
    )
    env = os.environ.get
    p.add_argument("--server", default=env("TCP_TASK_SERVER") or "127.0.0.1:7070",
                   metavar="HOST:PORT", help="the server [env: TCP_TASK_SERVER]")
    p.add_argument("--token", default=env("TCP_TASK_TOKEN") or None,
                   help="authentication token [env: TCP_TASK_TOKEN]")
    p.add_argument("--tls-ca", default=env("TCP_TASK_TLS_CA") or None, metavar="FILE",
                   help="connect with TLS, trusting this CA (PEM) [env: TCP_TASK_TLS_CA]")
    p.add_argument("--tls-cert", default=env("TCP_TASK_TLS_CERT") or None, metavar="FILE",
                   help="mutual TLS: this client's certificate (PEM)")
    p.add_argument("--tls-key", default=env("TCP_TASK_TLS_KEY") or None, metavar="FILE",
                   help="mutual TLS: this client's key (PEM)")
    sub = p.add_subparsers(dest="command", required=True)

    def task_options(s):
        s.add_argument("-i", "--interactive", action="store_true",
                       help="send this process's stdin to the task")
        s.add_argument("--timeout", type=parse_duration, metavar="DURATION",
                       help="kill the task after this long: 30s, 500ms, 2m")

    run = sub.add_parser("run", help="run a command in a new container",
                         description="Everything after IMAGE is the command; none runs "
                         "the image's default command.")
    task_options(run)
    run.add_argument("-e", "--env", action="append", default=[], type=key_value("-e"),
                     metavar="KEY=VALUE")
    run.add_argument("-w", "--workdir", metavar="DIR")
    run.add_argument("-u", "--user", metavar="USER")
    run.add_argument("--memory", type=parse_size, metavar="SIZE")
    run.add_argument("--cpus", type=float)
    run.add_argument("--pids-limit", type=int)
    run.add_argument("--network", metavar="MODE")
    run.add_argument("--read-only", action="store_true")
    run.add_argument("--label", action="append", default=[], type=key_value("--label"),
                     metavar="KEY=VALUE")
    run.add_argument("image")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="COMMAND")

    named = sub.add_parser("task", help="run a pre-compiled task of the server's catalog")
    task_options(named)
    named.add_argument("--params", metavar="JSON", help="JSON parameters (TASK_PARAMS)")
    named.add_argument("name")
    named.add_argument("args", nargs=argparse.REMAINDER)

    for name, help in (("status", "the server's status"), ("tasks", "the catalog")):
        s = sub.add_parser(name, help=help)
        s.add_argument("--json", action="store_true")
    sub.add_parser("ping", help="a round trip to the server")
    return p


def connect(args) -> Client:
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = tls_context(args.tls_ca, args.tls_cert, args.tls_key)
    return Client.connect(args.server, token=args.token, tls=tls)


def spec_of(args) -> TaskSpec:
    if args.command == "task":
        if args.params is not None:
            try:
                json.loads(args.params)
            except ValueError as e:
                raise ValueError(f"--params is not valid JSON: {e}") from None
        spec = TaskSpec.named(args.name, args.args, args.params)
    else:
        command = args.args[1:] if args.args[:1] == ["--"] else args.args
        spec = TaskSpec.image(
            args.image,
            command,
            env=args.env,
            workdir=args.workdir,
            user=args.user,
            memory_bytes=args.memory,
            nano_cpus=None if args.cpus is None else int(round(args.cpus * 1e9)),
            pids_limit=args.pids_limit,
            network=args.network,
            read_only_root=args.read_only,
            labels=args.label,
        )
    spec.stdin = args.interactive
    if args.timeout is not None:
        spec.timeout_ms = max(1, int(args.timeout * 1000))
    return spec


def pump_stdin(task: Task) -> None:
    stream = sys.stdin.buffer
    try:
        while True:
            data = stream.read1(64 * 1024) if hasattr(stream, "read1") else stream.read(65536)
            if not data:
                break
            task.write(data)
        task.close_stdin()
    except (TcpTaskError, OSError):
        pass


def ending_message(outcome: wire.Outcome) -> Optional[str]:
    seconds = outcome.duration_ms / 1000
    return {
        Ending.TIMED_OUT: f"the task timed out after {seconds:.1f}s and was killed "
        "(allow more with --timeout)",
        Ending.OOM_KILLED: "the task ran out of memory and was killed (allow more with --memory)",
        Ending.OUTPUT_LIMIT: "the task wrote more output than the server relays (its output "
        "limit) and was killed",
        Ending.CANCELLED: "the task was cancelled",
    }.get(outcome.ending)


def follow(task: Task) -> int:
    """Relays the task's output until it ends; returns the exit status. The
    first SIGINT or SIGTERM cancels the task and waits for its end; a second
    stops waiting."""
    interrupted: List[int] = []

    def on_signal(signum, _frame):
        interrupted.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    output_lost = False
    cancelled_for = 0
    try:
        while True:
            if len(interrupted) > cancelled_for:
                if cancelled_for:
                    say("not waiting for the task's end; the server removes its container")
                    return 128 + interrupted[0]
                cancelled_for = len(interrupted)
                say("cancelling the task (interrupt again to stop waiting)")
                task.cancel()
            event = task.poll(timeout=0.2)
            if event is None:
                if task.done:
                    break
                continue
            if isinstance(event, Output) and not output_lost:
                out = sys.stdout if event.stream is OutputStream.STDOUT else sys.stderr
                try:
                    out.buffer.write(event.chunk)
                    out.buffer.flush()
                except BrokenPipeError:
                    # Nobody reads our output any more (`| head`): stop the task.
                    output_lost = True
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, out.fileno())
                    task.cancel()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    try:
        outcome = task.wait()
    except RemoteError as e:
        say(str(e))
        return e.exit_status()
    except TcpTaskError as e:
        say(str(e))
        return EXIT_FAILURE
    if outcome.ending is Ending.CANCELLED:
        if output_lost:
            return 128 + SIGPIPE
        if interrupted:
            say("the task was cancelled")
            return 128 + interrupted[0]
    message = ending_message(outcome)
    if message:
        say(message)
    return min(max(outcome.exit_status(), 0), 255)


def run_task(args) -> int:
    try:
        spec = spec_of(args)
    except ValueError as e:
        say(str(e))
        return EXIT_FAILURE
    try:
        client = connect(args)
    except (TcpTaskError, ValueError, OSError) as e:
        say(str(e))
        return e.exit_status() if isinstance(e, TcpTaskError) else EXIT_FAILURE
    with client:
        try:
            task = client.submit(spec)
        except TcpTaskError as e:
            say(str(e))
            return EXIT_FAILURE
        if spec.stdin:
            threading.Thread(target=pump_stdin, args=(task,), daemon=True).start()
        return follow(task)


def info(args) -> int:
    try:
        with connect(args) as client:
            if args.command == "ping":
                rtt, _ = client.ping(b"tcp-task-client")
                print(f"pong from {client.server} in {rtt * 1000:.2f} ms")
                return 0
            if args.command == "status":
                status = client.status()
                if args.json:
                    print(json.dumps(wire.to_plain(status), indent=2))
                else:
                    engine = status.engine
                    print(f"server      {status.server} (protocol {status.protocol_version})")
                    print(f"uptime      {status.uptime_ms / 1000:.0f} s")
                    print(f"connections {status.connections}")
                    print(f"tasks       {status.running} running, {status.queued} queued, "
                          f"{status.finished} finished, {status.failed} failed")
                    state = (f"reachable, {engine.version} (API {engine.api_version})"
                             if engine.reachable else f"unreachable: {engine.error}")
                    print(f"engine      {state}")
                    print(f"catalog     {status.catalog_size} tasks")
                    for pool in status.pools:
                        print(f"pool        {pool.key}: {pool.warm} warm, {pool.in_use} in use, "
                              f"{pool.hits} hits, {pool.misses} misses")
                    for node in status.nodes:
                        role = "manager" if node.manager else "worker"
                        print(f"node        {node.name} ({role}): {node.state}, "
                              f"{node.availability}, {node.nano_cpus / 1e9:g} CPUs, "
                              f"{node.memory_bytes // (1024 * 1024)} MiB, {node.tasks} tasks")
                return 0
            entries = client.catalog()
            if args.json:
                print(json.dumps(wire.to_plain(entries), indent=2))
            else:
                for entry in entries:
                    print(f"{entry.name:<12} {entry.description}")
            return 0
    except (TcpTaskError, ValueError, OSError) as e:
        say(str(e))
        return EXIT_FAILURE


def main(argv: Optional[List[str]] = None) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        # Like `docker run`: a command line that cannot be parsed exits 125.
        return 0 if e.code == 0 else EXIT_FAILURE
    if args.command in ("run", "task"):
        return run_task(args)
    return info(args)
