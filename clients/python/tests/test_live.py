"""The client against a real tcp-task server and container engine.

The servers are named by the environment (tests/python_client.rs in the
repository starts them and runs this suite); without it these tests skip:

- TCP_TASK_TEST_SERVER: a plaintext server without token;
- TCP_TASK_TEST_TLS_SERVER: a server with TLS, mutual TLS and a token, with
  TCP_TASK_TEST_TLS_CA (the CA of both sides' certificates),
  TCP_TASK_TEST_TLS_CERT and TCP_TASK_TEST_TLS_KEY (a client certificate)
  and TCP_TASK_TEST_TOKEN;
- TCP_TASK_TEST_DURABLE_SERVER: a plaintext server without token for the
  tests of tasks by their ids (default: TCP_TASK_TEST_SERVER);
- TCP_TASK_TEST_IMAGE: the examples image (default tcp-task-examples:0.1.0).
"""

import os
import re
import threading
import time
import unittest

from tcp_task_client import (
    Accepted,
    Client,
    ConnectError,
    Created,
    Ending,
    ErrorKind,
    Offsets,
    Output,
    OutputStream,
    Progress,
    RemoteError,
    Started,
    StateEnded,
    StateRunning,
    TaskFailed,
    TaskId,
    TaskSpec,
    TcpTaskError,
    tls_context,
    wire,
)

SERVER = os.environ.get("TCP_TASK_TEST_SERVER")
TLS_SERVER = os.environ.get("TCP_TASK_TEST_TLS_SERVER")
DURABLE_SERVER = os.environ.get("TCP_TASK_TEST_DURABLE_SERVER", SERVER)
IMAGE = os.environ.get("TCP_TASK_TEST_IMAGE", "tcp-task-examples:0.1.0")

#: No test waits longer than this for anything.
PATIENCE = 120


def image(*command, **settings) -> TaskSpec:
    return TaskSpec.image(IMAGE, list(command), **settings)


def binary_data(n: int) -> bytes:
    state = 0x9E3779B97F4A7C15
    out = bytearray()
    for _ in range(n):
        state ^= (state << 13) & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 7
        state ^= (state << 17) & 0xFFFFFFFFFFFFFFFF
        out.append((state >> 32) & 0xFF)
    return bytes(out)


@unittest.skipUnless(SERVER, "TCP_TASK_TEST_SERVER names no server")
class PlainServer(unittest.TestCase):
    def setUp(self):
        self.client = Client.connect(SERVER, client_name="python tests")
        self.addCleanup(self.client.close)

    def test_ping_carries_its_payload_both_ways(self):
        payload = bytes(range(256)) * 400
        rtt, back = self.client.ping(payload, timeout=PATIENCE)
        self.assertEqual(back, payload)
        self.assertGreaterEqual(rtt, 0)

    def test_status_decodes_every_field(self):
        status = self.client.status(timeout=PATIENCE)
        self.assertTrue(status.server.startswith("tcp-task "), status)
        self.assertEqual(status.protocol_version, wire.PROTOCOL_VERSION)
        self.assertTrue(status.engine.reachable, status.engine)
        self.assertIsNotNone(status.engine.api_version)
        self.assertIsNone(status.engine.error)
        self.assertGreaterEqual(status.connections, 1)
        self.assertGreaterEqual(status.catalog_size, 1)
        self.assertIsInstance(status.pools, list)

    def test_the_catalog_lists_the_example_tasks(self):
        entries = {e.name: e for e in self.client.catalog(timeout=PATIENCE)}
        self.assertIn("sum", entries)
        self.assertEqual(entries["sum"].image, IMAGE)
        self.assertEqual(sorted(entries), list(entries), "sorted by name")

    def test_the_welcome_announces_the_limits(self):
        limits = self.client.limits
        self.assertEqual(limits.max_frame_len, 1024 * 1024)
        self.assertEqual(limits.max_chunk_len, 64 * 1024)
        self.assertGreater(limits.max_tasks_per_connection, 0)
        self.assertGreater(limits.idle_timeout_ms, 0)

    def test_a_task_runs_and_its_frames_come_in_order(self):
        task = self.client.submit(image("mixed", "3"))
        events = list(task.events(timeout=PATIENCE))
        outcome = task.wait()
        self.assertIsInstance(events[0], Accepted)
        kinds = [type(e.event) if isinstance(e, Progress) else type(e) for e in events]
        self.assertIn(Started, kinds)
        first_output = kinds.index(Output)
        self.assertLess(kinds.index(Started), first_output, "output only after Started")
        out = b"".join(e.chunk for e in events if isinstance(e, Output)
                       and e.stream is OutputStream.STDOUT)
        err = b"".join(e.chunk for e in events if isinstance(e, Output)
                       and e.stream is OutputStream.STDERR)
        self.assertEqual(out, b"out 0\nout 1\nout 2\n")
        self.assertEqual(err, b"err 0\nerr 1\nerr 2\n")
        self.assertEqual((outcome.ending, outcome.exit_code, outcome.signal),
                         (Ending.EXITED, 0, None))
        self.assertFalse(outcome.output_truncated)

    def test_an_empty_command_runs_the_images_default(self):
        result = self.client.run(image(), timeout=PATIENCE)
        self.assertEqual(result.outcome.exit_status(), 0)
        self.assertTrue(result.stdout or result.stderr, "the default command says something")

    def test_a_named_task_with_params(self):
        spec = TaskSpec.named("sum", ["1", "2"], params='{"unused": true}')
        result = self.client.run(spec, timeout=PATIENCE)
        self.assertEqual(result.stdout, b"3\n")

    def test_stdin_reaches_the_task_byte_for_byte(self):
        data = binary_data(1_500_000)
        task = self.client.submit(image("cat", stdin=True))
        writer = threading.Thread(target=lambda: (task.write(data), task.close_stdin()))
        writer.start()
        result = task.output(timeout=PATIENCE)
        writer.join()
        self.assertEqual(len(result.stdout), len(data))
        self.assertEqual(result.stdout, data)
        self.assertEqual(result.outcome.exit_status(), 0)

    def test_a_task_that_does_not_read_its_stdin_holds_up_only_its_writer(self):
        stalled = self.client.submit(image("sleep", "60", stdin=True))
        self.assertIsInstance(next(stalled.events(timeout=PATIENCE)), Accepted)
        errors = []

        def write():
            try:
                stalled.write(bytes(8 << 20))
            except TcpTaskError as e:
                errors.append(e)

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(0.5)
        self.assertTrue(writer.is_alive(), "8 MiB went into a task that reads none of it")
        beside = self.client.run(image("echo", "beside"), timeout=PATIENCE)
        self.assertEqual(beside.stdout, b"beside\n")
        stalled.cancel()
        self.assertEqual(stalled.wait(timeout=PATIENCE).ending, Ending.CANCELLED)
        writer.join(PATIENCE)
        self.assertFalse(writer.is_alive(), "the writer still waits after the task ended")
        self.assertEqual(len(errors), 1)

    def test_binary_output_arrives_whole(self):
        result = self.client.run(image("zeros", "200000"), timeout=PATIENCE)
        self.assertEqual(result.stdout, bytes(200000))

    def test_tasks_on_one_connection_run_at_once(self):
        tasks = [self.client.submit(image("lines", "5", "50")) for _ in range(3)]
        for task in tasks:
            result = task.output(timeout=PATIENCE)
            self.assertEqual(result.stdout, b"".join(b"line %d\n" % i for i in range(5)))

    def test_a_missing_command_is_accepted_then_fails(self):
        task = self.client.submit(image("no-such-command"))
        with self.assertRaises(TaskFailed) as failed:
            task.wait(timeout=PATIENCE)
        self.assertTrue(task.accepted, "Accepted comes before the failure")
        self.assertEqual(failed.exception.kind, ErrorKind.COMMAND_NOT_FOUND)
        self.assertEqual(failed.exception.exit_status(), 127)

    def test_a_command_that_cannot_run_is_accepted_then_fails(self):
        task = self.client.submit(image("/etc/passwd"))
        with self.assertRaises(TaskFailed) as failed:
            task.wait(timeout=PATIENCE)
        self.assertTrue(task.accepted)
        self.assertEqual(failed.exception.kind, ErrorKind.COMMAND_NOT_INVOKABLE)
        self.assertEqual(failed.exception.exit_status(), 126)

    def test_a_program_exiting_127_itself_is_an_exit(self):
        outcome = self.client.submit(image("exit", "127")).wait(timeout=PATIENCE)
        self.assertEqual((outcome.ending, outcome.exit_code), (Ending.EXITED, 127))

    def test_refusals_come_without_accepted(self):
        cases = [
            (TaskSpec.named("no-such-task"), ErrorKind.UNKNOWN_TASK),
            (image("true", network="host"), ErrorKind.POLICY_DENIED),
            (image("true", pids_limit=0), ErrorKind.POLICY_DENIED),
            (TaskSpec.image("   ", ["true"]), ErrorKind.BAD_REQUEST),
            (image("true", env=[("A=B", "c")]), ErrorKind.BAD_REQUEST),
            (TaskSpec.named("sum", params="{not json"), ErrorKind.BAD_REQUEST),
        ]
        for spec, kind in cases:
            with self.subTest(kind=kind):
                task = self.client.submit(spec)
                with self.assertRaises(TaskFailed) as failed:
                    task.wait(timeout=PATIENCE)
                self.assertEqual(failed.exception.kind, kind)
                self.assertFalse(task.accepted, "a refusal is a single Failed frame")
                self.assertEqual(failed.exception.exit_status(), 125)

    def test_past_the_connections_task_limit_a_submit_is_refused_busy(self):
        limit = self.client.limits.max_tasks_per_connection
        self.assertLessEqual(limit, 8, "the test server keeps this limit small")
        running = [self.client.submit(image("sleep", "60")) for _ in range(limit)]
        for task in running:
            self.assertIsInstance(next(task.events(timeout=PATIENCE)), Accepted)
        extra = self.client.submit(image("true"))
        with self.assertRaises(TaskFailed) as failed:
            extra.wait(timeout=PATIENCE)
        self.assertEqual(failed.exception.kind, ErrorKind.BUSY)
        self.assertFalse(extra.accepted)
        for task in running:
            task.cancel()
        for task in running:
            outcome = task.wait(timeout=PATIENCE)
            self.assertEqual((outcome.ending, outcome.exit_code, outcome.signal),
                             (Ending.CANCELLED, None, None))
            self.assertEqual(outcome.exit_status(), 130)

    def test_signals_and_their_exit_statuses(self):
        for sig in (9, 15):
            with self.subTest(signal=sig):
                outcome = self.client.submit(image("killself", str(sig))).wait(timeout=PATIENCE)
                self.assertEqual((outcome.ending, outcome.exit_code, outcome.signal),
                                 (Ending.SIGNALED, 128 + sig, sig))
                self.assertEqual(outcome.exit_status(), 128 + sig)

    def test_a_timeout_carries_neither_exit_code_nor_signal(self):
        started = time.monotonic()
        outcome = self.client.submit(image("sleep", "30", timeout_ms=1000)).wait(timeout=PATIENCE)
        self.assertLess(time.monotonic() - started, 25)
        self.assertEqual((outcome.ending, outcome.exit_code, outcome.signal),
                         (Ending.TIMED_OUT, None, None))
        self.assertGreaterEqual(outcome.duration_ms, 900)
        self.assertEqual(outcome.exit_status(), 124)

    def test_cancel_ends_a_running_task(self):
        task = self.client.submit(image("sleep", "30"))
        for event in task.events(timeout=PATIENCE):
            if isinstance(event, Progress) and isinstance(event.event, Started):
                break
        task.cancel()
        outcome = task.wait(timeout=PATIENCE)
        self.assertEqual(outcome.ending, Ending.CANCELLED)

    def test_a_duplicate_id_is_an_error_that_ends_nothing(self):
        task = self.client.submit(image("sleep", "1"))
        self.assertIsInstance(next(task.events(timeout=PATIENCE)), Accepted)
        # The library never reuses an id; send the duplicate by hand.
        self.client._send(wire.Submit(task.id, image("true")))
        outcome = task.wait(timeout=PATIENCE)
        self.assertEqual([n.kind for n in task.notes], [ErrorKind.DUPLICATE_ID])
        self.assertEqual((outcome.ending, outcome.exit_code), (Ending.EXITED, 0))

    def test_stdin_to_a_task_without_stdin_is_an_error_that_ends_nothing(self):
        task = self.client.submit(image("sleep", "1"))
        self.assertIsInstance(next(task.events(timeout=PATIENCE)), Accepted)
        # The library refuses at once; sent by hand, the server says so.
        with self.assertRaises(TcpTaskError):
            task.write(b"nobody reads this")
        self.client._send(wire.Stdin(task.id, b"nobody reads this"))
        outcome = task.wait(timeout=PATIENCE)
        self.assertEqual([n.kind for n in task.notes], [ErrorKind.UNKNOWN_REQUEST])
        self.assertEqual(outcome.exit_status(), 0)

    def test_progress_names_the_container(self):
        task = self.client.submit(image("true"))
        events = list(task.events(timeout=PATIENCE))
        task.wait()
        created = [e.event for e in events if isinstance(e, Progress)
                   and isinstance(e.event, Created)]
        self.assertEqual(len(created), 1)
        self.assertTrue(created[0].container)


def streams(task, timeout=PATIENCE):
    """A followed task's stdout and stderr, once it has ended."""
    out, err = bytearray(), bytearray()
    for event in task.events(timeout):
        if isinstance(event, Output):
            (out if event.stream is OutputStream.STDOUT else err).extend(event.chunk)
    return bytes(out), bytes(err)


def listed(client, task_id, all=True):
    """The ``TaskInfo`` of ``task_id`` in the client's list, or None."""
    found = [t for t in client.list(all=all, timeout=PATIENCE) if t.id == task_id]
    return found[0] if found else None


@unittest.skipUnless(DURABLE_SERVER, "TCP_TASK_TEST_DURABLE_SERVER names no server")
class DurableTasks(unittest.TestCase):
    """Tasks by their server-wide ids: detach, list, wait, attach, kill,
    remove (docs/PROTOCOL.md, "Tasks outlive connections")."""

    def connect(self):
        client = Client.connect(DURABLE_SERVER, client_name="python tests (durable)")
        self.addCleanup(client.close)
        return client

    def test_a_submitted_task_is_accepted_with_its_id(self):
        client = self.connect()
        task = client.submit(image("true"))
        accepted = next(task.events(timeout=PATIENCE))
        self.assertIsInstance(accepted, Accepted)
        self.assertIsInstance(accepted.task, TaskId)
        self.assertRegex(accepted.task, r"^[a-z2-7]{20}$")
        self.assertEqual(task.task_id, accepted.task)
        task.wait(timeout=PATIENCE)

    def test_a_detached_task_is_listed_waited_for_replayed_and_removed(self):
        submitter = self.connect()
        task_id = submitter.run_detached(image("mixed", "3"), timeout=PATIENCE)
        self.assertRegex(task_id, r"^[a-z2-7]{20}$")
        # The submitter leaves; the task runs on.
        submitter.close()

        client = self.connect()
        info = listed(client, task_id)
        self.assertIsNotNone(info, "a detached task is listed from another connection")
        self.assertEqual((info.image, info.command, info.detached),
                         (IMAGE, ["mixed", "3"], True))
        self.assertGreater(info.created_ms, 1_600_000_000_000)

        outcome = client.wait(task_id, timeout=PATIENCE)
        self.assertEqual((outcome.ending, outcome.exit_code), (Ending.EXITED, 0))

        # Its whole output, replayed: twice, and from offsets.
        expected_out = b"out 0\nout 1\nout 2\n"
        expected_err = b"err 0\nerr 1\nerr 2\n"
        for _ in range(2):
            attached = client.attach(task_id)
            self.assertEqual(streams(attached), (expected_out, expected_err))
            self.assertEqual(attached.task_id, task_id)
            self.assertEqual(attached.wait().exit_code, 0)
            self.assertEqual(attached.offsets, Offsets(len(expected_out), len(expected_err)))
        part = client.attach(task_id, offsets=Offsets(stdout=6, stderr=12), follow=False)
        self.assertEqual(streams(part), (expected_out[6:], expected_err[12:]))
        self.assertEqual(part.wait().ending, Ending.EXITED)

        info = listed(client, task_id)
        self.assertIsInstance(info.state, StateEnded)
        self.assertEqual(info.state.outcome.exit_code, 0)
        self.assertEqual(info.output_bytes, len(expected_out) + len(expected_err))
        self.assertIsNone(listed(client, task_id, all=False), "only running tasks without all")

        client.remove(task_id, timeout=PATIENCE)
        self.assertIsNone(listed(client, task_id))
        with self.assertRaises(TaskFailed) as gone:
            client.wait(task_id, timeout=PATIENCE)
        self.assertEqual(gone.exception.kind, ErrorKind.NO_SUCH_TASK)
        with self.assertRaises(RemoteError) as again:
            client.remove(task_id, timeout=PATIENCE)
        self.assertEqual(again.exception.kind, ErrorKind.NO_SUCH_TASK)

    def test_following_stops_without_stopping_the_task_and_kill_signals_it(self):
        client = self.connect()
        task_id = client.run_detached(image("lines", "600", "100"), timeout=PATIENCE)
        self.addCleanup(self.remove_quietly, task_id)
        # Once it has written something its container surely runs.
        deadline = time.monotonic() + PATIENCE
        while listed(client, task_id, all=False).output_bytes == 0:
            self.assertLess(time.monotonic(), deadline, "the task never wrote")
            time.sleep(0.05)
        follower = client.attach(task_id)
        first = None
        for event in follower.events(timeout=PATIENCE):
            if isinstance(event, Output):
                first = event.chunk
                break
        self.assertIsNotNone(first, f"no output; notes: {follower.notes}")
        self.assertTrue(first.startswith(b"line 0\n"), first)
        follower.cancel()
        with self.assertRaises(TaskFailed) as stopped:
            follower.wait(timeout=PATIENCE)
        self.assertEqual(stopped.exception.kind, ErrorKind.DETACHED)

        # Still running: a look without follow ends Detached too.
        self.assertIsInstance(listed(client, task_id, all=False).state, StateRunning)
        look = client.attach(task_id, follow=False)
        out, _ = streams(look)
        self.assertTrue(out.startswith(b"line 0\n"), out[:40])
        with self.assertRaises(TaskFailed) as looked:
            look.wait()
        self.assertEqual(looked.exception.kind, ErrorKind.DETACHED)

        with self.assertRaises(RemoteError) as bad:
            client.kill(task_id, 0, timeout=PATIENCE)
        self.assertEqual(bad.exception.kind, ErrorKind.BAD_REQUEST)
        with self.assertRaises(RemoteError) as running:
            client.remove(task_id, timeout=PATIENCE)
        self.assertEqual(running.exception.kind, ErrorKind.BAD_REQUEST)

        client.kill(task_id, 15, timeout=PATIENCE)
        outcome = client.wait(task_id, timeout=PATIENCE)
        self.assertEqual((outcome.ending, outcome.signal, outcome.exit_status()),
                         (Ending.SIGNALED, 15, 143))
        with self.assertRaises(RemoteError) as ended:
            client.kill(task_id, 9, timeout=PATIENCE)
        self.assertEqual(ended.exception.kind, ErrorKind.BAD_REQUEST)

    def test_remove_with_force_stops_a_running_task(self):
        client = self.connect()
        task_id = client.run_detached(image("sleep", "60"), timeout=PATIENCE)
        # Someone follows it (from another connection) before it goes.
        follower = self.connect().attach(task_id)
        self.assertIsInstance(next(follower.events(timeout=PATIENCE)), Accepted)
        client.remove(task_id, force=True, timeout=PATIENCE)
        self.assertEqual(follower.wait(timeout=PATIENCE).ending, Ending.CANCELLED)
        self.assertIsNone(listed(client, task_id))

    def test_unknown_task_ids_are_no_such_task(self):
        client = self.connect()
        unknown = "a" * 20
        with self.assertRaises(TaskFailed) as waited:
            client.wait(unknown, timeout=PATIENCE)
        self.assertEqual(waited.exception.kind, ErrorKind.NO_SUCH_TASK)
        attached = client.attach(unknown)
        with self.assertRaises(TaskFailed) as refused:
            attached.wait(timeout=PATIENCE)
        self.assertEqual(refused.exception.kind, ErrorKind.NO_SUCH_TASK)
        self.assertFalse(attached.accepted, "a refused attach is a single Failed frame")
        for action in (lambda: client.kill(unknown, 9, timeout=PATIENCE),
                       lambda: client.remove(unknown, timeout=PATIENCE)):
            with self.assertRaises(RemoteError) as error:
                action()
            self.assertEqual(error.exception.kind, ErrorKind.NO_SUCH_TASK)
        for bad in ("", "a" * (wire.MAX_TASK_ID_LEN + 1)):
            with self.assertRaises(ValueError):
                client.wait(bad)

    def test_closing_the_client_cancels_the_tasks_it_submitted(self):
        submitter = self.connect()
        task = submitter.submit(image("sleep", "60"))
        self.assertIsInstance(next(task.events(timeout=PATIENCE)), Accepted)
        started = time.monotonic()
        submitter.close()
        # Left alone it would run on for the server's reattach grace (30 s).
        client = self.connect()
        while listed(client, task.task_id, all=False) is not None:
            self.assertLess(time.monotonic() - started, 20, "the task still runs")
            time.sleep(0.1)

    def remove_quietly(self, task_id):
        with Client.connect(DURABLE_SERVER) as client:
            try:
                client.remove(task_id, force=True, timeout=PATIENCE)
            except RemoteError:
                pass


@unittest.skipUnless(TLS_SERVER, "TCP_TASK_TEST_TLS_SERVER names no server")
class TlsServerWithToken(unittest.TestCase):
    def context(self, with_cert=True):
        env = os.environ
        if with_cert:
            return tls_context(env["TCP_TASK_TEST_TLS_CA"], env["TCP_TASK_TEST_TLS_CERT"],
                               env["TCP_TASK_TEST_TLS_KEY"])
        return tls_context(env["TCP_TASK_TEST_TLS_CA"])

    def test_tls_and_a_token_let_tasks_run(self):
        token = os.environ["TCP_TASK_TEST_TOKEN"]
        with Client.connect(TLS_SERVER, token=token, tls=self.context()) as client:
            rtt, payload = client.ping(b"over tls", timeout=PATIENCE)
            self.assertEqual(payload, b"over tls")
            result = client.run(image("sum", "20", "22"), timeout=PATIENCE)
            self.assertEqual(result.stdout, b"42\n")

    def test_a_wrong_token_is_unauthorized(self):
        with self.assertRaises(RemoteError) as refused:
            Client.connect(TLS_SERVER, token="not the token", tls=self.context())
        self.assertEqual(refused.exception.kind, ErrorKind.UNAUTHORIZED)

    def test_plaintext_at_a_tls_server_is_told_so(self):
        with self.assertRaises(RemoteError) as refused:
            Client.connect(TLS_SERVER, token=os.environ["TCP_TASK_TEST_TOKEN"])
        self.assertEqual(refused.exception.kind, ErrorKind.PROTOCOL)
        self.assertIn("TLS", str(refused.exception))

    def test_without_a_client_certificate_the_connection_fails(self):
        with self.assertRaises(ConnectError):
            Client.connect(TLS_SERVER, token=os.environ["TCP_TASK_TEST_TOKEN"],
                           tls=self.context(with_cert=False), timeout=30)

    @unittest.skipUnless(SERVER, "TCP_TASK_TEST_SERVER names no server")
    def test_tls_at_a_plaintext_server_fails_to_connect(self):
        with self.assertRaises(ConnectError):
            Client.connect(SERVER, tls=self.context(), timeout=30)


if __name__ == "__main__":
    unittest.main()
