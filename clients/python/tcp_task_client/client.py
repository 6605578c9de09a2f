"""A tcp-task connection: handshake, requests, and the tasks running on it.

Written from docs/PROTOCOL.md. One background thread does all the socket's
reading and writing (so a TLS connection is never used from two threads at
once, and writing a large stdin never stops the reading of output); the
calling threads hand it frames to send and take the frames it sorted by
request id.
"""

from __future__ import annotations

import collections
import itertools
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Deque, Dict, Iterator, List, Optional, Tuple, Union

from . import wire
from .wire import (
    Accepted,
    CatalogEntryInfo,
    CatalogReply,
    Done,
    Error,
    ErrorKind,
    Exited,
    Failed,
    Limits,
    Offsets,
    Outcome,
    Output,
    OutputStream,
    Pong,
    Progress,
    ServerStatus,
    StatusReply,
    StdinCredit,
    TaskError,
    TaskId,
    TaskInfo,
    TaskList,
    TaskSpec,
    Welcome,
)

DEFAULT_PORT = 7070

#: Bytes of events one task may have waiting to be read before the
#: connection stops reading (and the server slows that task's output).
EVENT_BUFFER = 1024 * 1024

#: Bytes waiting to be written before ``Task.write`` waits.
WRITE_BUFFER = 1024 * 1024


class TcpTaskError(Exception):
    """Anything that went wrong talking to a tcp-task server."""

    def exit_status(self) -> int:
        return 125


class ConnectError(TcpTaskError):
    """The TCP connection (or the TLS handshake) could not be made."""


class RemoteError(TcpTaskError):
    """The server refused something, with a ``TaskError`` saying why: a
    refused handshake, a task that was refused or could not run."""

    def __init__(self, error: TaskError):
        super().__init__(error.message)
        self.error = error

    @property
    def kind(self) -> ErrorKind:
        return self.error.kind

    def exit_status(self) -> int:
        return self.error.kind.exit_status()


class TaskFailed(RemoteError):
    """A task ended with ``Failed``."""


class Disconnected(TcpTaskError):
    """The connection closed before the answer came."""


def parse_address(address: str) -> Tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host (port 7070)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    if not host:
        raise ValueError(f"{address!r}: no host; give HOST:PORT, e.g. 127.0.0.1:7070")
    try:
        return host, int(port) if port else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{address!r}: the port is not a number") from None


def tls_context(
    ca_file: Optional[str] = None,
    cert_file: Optional[str] = None,
    key_file: Optional[str] = None,
) -> ssl.SSLContext:
    """A TLS client context trusting ``ca_file`` (the system's CAs when
    None), presenting ``cert_file``/``key_file`` for mutual TLS."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file or key_file:
        if not (cert_file and key_file):
            raise ValueError("a client certificate needs its key, and the reverse")
        context.load_cert_chain(cert_file, key_file)
    return context


# ---------------------------------------------------------------------------
# Events a task reports
# ---------------------------------------------------------------------------


@dataclass
class TaskOutput:
    stdout: bytes
    stderr: bytes
    outcome: Outcome


TaskEvent = Union[Accepted, Progress, Output]


class _Inbox:
    """Frames for one request, waiting for whoever reads them."""

    def __init__(self) -> None:
        self.items: Deque = collections.deque()
        self.size = 0
        self.cond = threading.Condition()
        self.closed: Optional[TcpTaskError] = None


def _weight(message) -> int:
    return len(message.chunk) + 16 if isinstance(message, Output) else 16


class Task:
    """One request that follows a task: a submitted task, or one followed by
    :meth:`Client.attach`. Iterate :meth:`events` (or call :meth:`wait` or
    :meth:`output`) to follow it; :meth:`write`, :meth:`close_stdin` and
    :meth:`cancel` act on it while it runs.

    ``id`` is the request id on this connection; ``task_id`` the task's
    server-wide id, once ``Accepted`` has been read."""

    def __init__(
        self,
        connection: "Client",
        id: int,
        spec: Optional[TaskSpec],
        inbox: _Inbox,
        offsets: Optional[Offsets] = None,
    ):
        self._connection = connection
        self.id = id
        self.spec = spec
        self._inbox = inbox
        self._end: Optional[Union[Outcome, TcpTaskError]] = None
        self.accepted = False
        #: The task's server-wide id, from its ``Accepted``.
        self.task_id: Optional[TaskId] = None
        #: Output bytes of each stream handed out so far (counted from the
        #: offsets an attach started at): where a new ``attach`` would go on
        #: after a lost connection. This client does not re-attach by itself.
        self.offsets = Offsets(offsets.stdout, offsets.stderr) if offsets else Offsets()
        #: ``Error`` frames that carried this task's id (they end nothing:
        #: a stray ``Stdin`` after the end, a duplicate Submit, a replay
        #: that failed).
        self.notes: List[TaskError] = []

    def events(self, timeout: Optional[float] = None) -> Iterator[TaskEvent]:
        """The task's ``Accepted``, ``Progress`` and ``Output`` messages as
        they arrive; ends when the task has ended (then :meth:`wait` returns
        or raises at once). ``timeout`` bounds the wait for each message
        (``TimeoutError``)."""
        while True:
            event = self.poll(timeout)
            if event is None:
                if self._end is not None:
                    return
                raise TimeoutError("no news of the task in time")
            yield event

    def poll(self, timeout: Optional[float] = None) -> Optional[TaskEvent]:
        """The next ``Accepted``, ``Progress`` or ``Output`` message, or None
        when the task has ended (see :attr:`done`) or none came within
        ``timeout`` seconds."""
        while self._end is None:
            message = self._connection._take(self._inbox, timeout)
            if message is None:
                return None
            if isinstance(message, Exited):
                self._end = message.outcome
                self._connection._forget(self.id)
            elif isinstance(message, Failed):
                self._end = TaskFailed(message.error)
                self._connection._forget(self.id)
            elif isinstance(message, TcpTaskError):
                self._end = message
            elif isinstance(message, Error):
                self.notes.append(message.error)
            else:
                if isinstance(message, Accepted):
                    self.accepted = True
                    self.task_id = message.task
                elif isinstance(message, Output):
                    if message.stream is OutputStream.STDOUT:
                        self.offsets.stdout += len(message.chunk)
                    else:
                        self.offsets.stderr += len(message.chunk)
                return message
        return None

    def wait(self, timeout: Optional[float] = None) -> Outcome:
        """The task's outcome; raises :class:`TaskFailed` if it could not
        run, :class:`Disconnected` if the connection was lost."""
        for _ in self.events(timeout):
            pass
        if isinstance(self._end, Exception):
            raise self._end
        return self._end

    def output(self, timeout: Optional[float] = None) -> TaskOutput:
        """Waits for the end, collecting stdout and stderr."""
        out, err = bytearray(), bytearray()
        for event in self.events(timeout):
            if isinstance(event, Output):
                (out if event.stream is OutputStream.STDOUT else err).extend(event.chunk)
        return TaskOutput(bytes(out), bytes(err), self.wait())

    @property
    def done(self) -> bool:
        return self._end is not None

    def write(self, data: bytes) -> None:
        """Sends bytes to the task's stdin (its spec must set ``stdin``),
        in chunks the server accepts, each once the task's stdin window has
        room for it: a task that does not read its stdin holds up this
        writer only. Raises once the task has ended."""
        limit = max(1, min(self._connection.limits.max_chunk_len, wire.MAX_CHUNK_LEN))
        view = memoryview(data)
        for start in range(0, len(view), limit):
            chunk = bytes(view[start : start + limit])
            self._connection._take_credit(self.id, len(chunk))
            self._connection._send(wire.Stdin(self.id, chunk), wait=True)

    def close_stdin(self) -> None:
        """End of the task's stdin."""
        self._connection._send(wire.StdinClose(self.id))

    def cancel(self) -> None:
        """For a submitted task: asks the server to stop the task; its end
        follows (``Cancelled``, unless it ended first). For an attached one:
        stops following it (the request ends with ``TaskFailed`` of kind
        ``DETACHED``); the task runs on."""
        if self._end is None:
            self._connection._send(wire.Cancel(self.id))


# ---------------------------------------------------------------------------
# The connection
# ---------------------------------------------------------------------------


class Client:
    """A connection to a tcp-task server. Thread-safe; use it as a context
    manager or call :meth:`close`. Closing it cancels the tasks it
    submitted (without ``detach``) that are still running.

    A connection that breaks is not a cancel: the server keeps such a task
    running for its reattach grace (30 s by default), waiting for an
    ``attach``. This client does not reconnect or re-attach by itself; a
    program may do so with :meth:`attach` and the :attr:`Task.offsets` it
    has."""

    def __init__(self, sock, welcome: Welcome):
        self.server = welcome.server
        self.limits: Limits = welcome.limits
        self._sock = sock
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._inboxes: Dict[int, _Inbox] = {}
        # Submitted tasks (not detached) that have not ended: close()
        # cancels them.
        self._submitted: Dict[int, Task] = {}
        self._closed: Optional[TcpTaskError] = None
        # The stdin window left of each running task that has stdin.
        self._credit: Dict[int, int] = {}
        self._last_error: Optional[TaskError] = None
        self._outgoing = bytearray()
        self._writable = threading.Condition(self._lock)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = False
        sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="tcp-task-io", daemon=True)
        self._thread.start()

    # -- connecting -------------------------------------------------------

    @classmethod
    def connect(
        cls,
        address: str,
        token: Optional[str] = None,
        tls: Optional[ssl.SSLContext] = None,
        client_name: str = "tcp-task-client (python)",
        timeout: float = 10.0,
        server_hostname: Optional[str] = None,
    ) -> "Client":
        """Connects, with TLS when ``tls`` is given, and shakes hands, all
        within ``timeout`` seconds."""
        host, port = parse_address(address)
        deadline = time.monotonic() + timeout
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise ConnectError(
                f"cannot connect to the tcp-task server at {address}: {e}. "
                "Is `tcp-task serve` running there?"
            ) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                try:
                    sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
                except ssl.SSLError as e:
                    raise ConnectError(
                        f"TLS handshake with {address} failed: {e.reason or e}; does the "
                        "server speak TLS, with a certificate the CA signed for this name?"
                    ) from None
                except ssl.CertificateError as e:
                    raise ConnectError(f"the server's certificate was refused: {e}") from None
            welcome = _handshake(sock, wire.Hello(client_name, token), deadline)
        except BaseException:
            sock.close()
            raise
        return cls(sock, welcome)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            running = [t for t in self._submitted.values() if not t.done]
            self._submitted.clear()
        for task in running:
            try:
                task.cancel()
            except TcpTaskError:
                break  # the connection is gone already
        with self._lock:
            self._stop = True
        self._wake()
        self._thread.join()

    # -- requests ---------------------------------------------------------

    def submit(self, spec: TaskSpec, detach: bool = False) -> Task:
        """Submits a task and returns at once; follow it on the returned
        :class:`Task`. With ``detach`` the task runs on after this
        connection closes, and the server keeps its result and output for
        its retention period (1 hour by default)."""
        id, inbox = self._register()
        task = Task(self, id, spec, inbox)
        with self._lock:
            if not detach:
                self._submitted[id] = task
            if spec.stdin:
                self._credit[id] = wire.STDIN_WINDOW
        self._send(wire.Submit(id, spec, detach))
        return task

    def run(self, spec: TaskSpec, timeout: Optional[float] = None) -> TaskOutput:
        """Submits a task and waits for its end, collecting its output."""
        return self.submit(spec).output(timeout)

    def run_detached(self, spec: TaskSpec, timeout: Optional[float] = None) -> TaskId:
        """Submits a task with ``detach`` and returns its id once the server
        has accepted it; raises :class:`TaskFailed` if it was refused. The
        task's frames on this connection are not read: follow it with
        :meth:`attach` or :meth:`wait`, from this connection or any other."""
        task = self.submit(spec, detach=True)
        first = task.poll(timeout)
        if isinstance(first, Accepted):
            self._forget(task.id)
            return first.task
        if first is None and not task.done:
            raise TimeoutError("the server did not accept the task in time")
        task.wait(0)  # raises the refusal, or the lost connection
        raise Disconnected(f"the server answered a submit with {first!r} before accepting it")

    def attach(
        self,
        task: str,
        offsets: Optional[Offsets] = None,
        follow: bool = True,
    ) -> Task:
        """Follows task ``task`` by its id (from any connection): ``Accepted``,
        its output replayed from ``offsets`` (all of it by default), then,
        with ``follow``, its live output, and its end. Without ``follow``
        the replay stops at what the task wrote so far, and a task still
        running ends the request with :class:`TaskFailed` of kind
        ``DETACHED``. An unknown id (or another client's) fails with kind
        ``NO_SUCH_TASK``. :meth:`Task.cancel` stops following; the task
        runs on."""
        wire.check_task_id(task)
        offsets = offsets or Offsets()
        id, inbox = self._register()
        followed = Task(self, id, None, inbox, offsets)
        self._send(wire.Attach(id, task, Offsets(offsets.stdout, offsets.stderr), follow))
        return followed

    def wait(self, task: str, timeout: Optional[float] = None) -> Outcome:
        """Waits for task ``task`` to end and returns its outcome; raises
        :class:`TaskFailed` if it could not run, or of kind ``NO_SUCH_TASK``
        if there is no such task (for this client)."""
        wire.check_task_id(task)
        id, inbox = self._register()
        waiter = Task(self, id, None, inbox)
        self._send(wire.Wait(id, task))
        try:
            return waiter.wait(timeout)
        finally:
            self._forget(id)

    def kill(self, task: str, signal: int = 9, timeout: Optional[float] = None) -> None:
        """Sends ``signal`` (a Linux signal number, 1 to 64: 9 is SIGKILL,
        15 SIGTERM) to the task's process. Raises :class:`RemoteError` when
        the server refuses (``NO_SUCH_TASK``; ``BAD_REQUEST`` for a task that
        has ended or a bad signal number)."""
        wire.check_task_id(task)
        self._request(lambda id: wire.Kill(id, task, signal), Done, timeout)

    def remove(self, task: str, force: bool = False, timeout: Optional[float] = None) -> None:
        """Forgets an ended task's result and removes its kept output; with
        ``force`` a running task is stopped first. Raises
        :class:`RemoteError` when the server refuses (``NO_SUCH_TASK``;
        ``BAD_REQUEST`` for a running task without ``force``)."""
        wire.check_task_id(task)
        self._request(lambda id: wire.Remove(id, task, force), Done, timeout)

    def list(self, all: bool = False, timeout: Optional[float] = None) -> List[TaskInfo]:
        """The tasks this client may see that are running and, with ``all``,
        the ended ones whose results the server keeps; oldest first."""
        return self._request(lambda id: wire.List_(id, all), TaskList, timeout).tasks

    def ping(self, payload: bytes = b"", timeout: Optional[float] = None) -> Tuple[float, bytes]:
        """A round trip: seconds taken, and the payload as it came back."""
        started = time.monotonic()
        pong = self._request(lambda id: wire.Ping(id, payload), Pong, timeout)
        return time.monotonic() - started, pong.payload

    def status(self, timeout: Optional[float] = None) -> ServerStatus:
        return self._request(wire.Status, StatusReply, timeout).status

    def catalog(self, timeout: Optional[float] = None) -> List[CatalogEntryInfo]:
        return self._request(wire.ListCatalog, CatalogReply, timeout).entries

    def _request(self, make, answer_type, timeout):
        id, inbox = self._register()
        self._send(make(id))
        try:
            answer = self._take(inbox, timeout)
        finally:
            self._forget(id)
        if answer is None:
            raise TimeoutError("no answer from the server in time")
        if isinstance(answer, TcpTaskError):
            raise answer
        if isinstance(answer, Error):
            raise RemoteError(answer.error)
        if not isinstance(answer, answer_type):
            raise Disconnected(f"the server answered with an unexpected frame: {answer!r}")
        return answer

    # -- plumbing shared with Task ------------------------------------------

    def _register(self) -> Tuple[int, _Inbox]:
        with self._lock:
            if self._closed is not None:
                raise self._closed
            id = next(self._ids)
            inbox = _Inbox()
            self._inboxes[id] = inbox
            return id, inbox

    def _forget(self, id: int) -> None:
        with self._lock:
            self._inboxes.pop(id, None)
            self._submitted.pop(id, None)

    def _send(self, message, wait: bool = False) -> None:
        """Queues a frame for the I/O thread. With ``wait``, first waits
        while the queue is long (stdin: a slow task slows its writer)."""
        data = wire.frame(wire.encode_client(message))
        with self._lock:
            while wait and len(self._outgoing) > WRITE_BUFFER and self._closed is None:
                self._writable.wait()
            if self._closed is not None:
                raise self._closed
            self._outgoing += data
        self._wake()

    def _take_credit(self, id: int, size: int) -> None:
        """Waits until request ``id``'s stdin window has ``size`` bytes of
        room, and takes them."""
        with self._lock:
            while self._closed is None and self._credit.get(id, size) < size:
                self._writable.wait()
            if self._closed is not None:
                raise self._closed
            if id not in self._credit:
                raise TcpTaskError(f"request {id} has ended or has no stdin: its stdin takes no more")
            self._credit[id] -= size

    def _take(self, inbox: _Inbox, timeout: Optional[float]):
        """The next frame for a request, the error that ended the
        connection, or None after ``timeout`` seconds without either."""
        with inbox.cond:
            if not inbox.cond.wait_for(lambda: inbox.items or inbox.closed, timeout):
                return None
            if not inbox.items:
                return inbox.closed
            message = inbox.items.popleft()
            before = inbox.size
            inbox.size -= _weight(message)
        if before > EVENT_BUFFER >= inbox.size:
            self._wake()  # the I/O thread may have paused reading for us
        return message

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    # -- the I/O thread -------------------------------------------------------

    def _run(self) -> None:
        reason = "the connection was closed by this client"
        try:
            reason = self._serve()
        except Exception as e:  # a bug here must still fail the waiters
            reason = f"the connection failed: {e!r}"
        finally:
            self._shut(reason)

    def _paused(self) -> bool:
        with self._lock:
            return any(i.size > EVENT_BUFFER for i in self._inboxes.values())

    def _serve(self) -> str:
        sock = self._sock
        incoming = bytearray()
        max_len = self.limits.max_frame_len
        while True:
            with self._lock:
                stop = self._stop
                pending = bool(self._outgoing)
            if stop:
                self._drain_outgoing()
                return "the connection was closed by this client"
            paused = self._paused()
            readers = [self._wake_r] if paused else [self._wake_r, sock]
            buffered = (not paused) and isinstance(sock, ssl.SSLSocket) and sock.pending()
            if not buffered:
                r, w, _ = select.select(readers, [sock] if pending else [], [], 1.0)
            else:
                r, w = [sock], []
            if self._wake_r in r:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            if sock in w or pending:
                self._flush()
            if sock in r:
                try:
                    data = sock.recv(256 * 1024)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    continue
                except OSError as e:
                    return f"the connection was lost: {e}"
                if not data:
                    return "the server closed the connection"
                incoming += data
                while len(incoming) >= 4:
                    (length,) = struct.unpack(">I", incoming[:4])
                    if length > max_len:
                        return (
                            f"the server sent a frame of {length} bytes, over the "
                            f"maximum of {max_len}"
                        )
                    if len(incoming) < 4 + length:
                        break
                    body = bytes(incoming[4 : 4 + length])
                    del incoming[: 4 + length]
                    try:
                        message = wire.decode_server(body)
                    except wire.DecodeError as e:
                        return f"the server sent a frame that does not decode: {e}"
                    self._deliver(message)

    def _drain_outgoing(self, within: float = 1.0) -> None:
        """Sends what is still queued (a last Cancel, say) before closing."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with self._lock:
                if not self._outgoing:
                    return
            select.select([], [self._sock], [], 0.05)
            try:
                self._flush()
            except OSError:
                return

    def _flush(self) -> None:
        with self._lock:
            data = bytes(self._outgoing[: 256 * 1024])
        if not data:
            return
        try:
            sent = self._sock.send(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        with self._lock:
            del self._outgoing[:sent]
            if len(self._outgoing) <= WRITE_BUFFER:
                self._writable.notify_all()

    def _deliver(self, message) -> None:
        if isinstance(message, Error) and message.id is None:
            # About the connection: the server closes it next.
            self._last_error = message.error
            return
        if isinstance(message, Welcome):
            return
        with self._lock:
            if isinstance(message, StdinCredit):
                if message.id in self._credit:
                    self._credit[message.id] += message.bytes
                    self._writable.notify_all()
                return
            if isinstance(message, (Exited, Failed)):
                # The task ended: its writers stop waiting for credit.
                if self._credit.pop(message.id, None) is not None:
                    self._writable.notify_all()
            inbox = self._inboxes.get(message.id)
        if inbox is None:
            return  # e.g. an answer to a request whose reader gave up
        with inbox.cond:
            inbox.items.append(message)
            inbox.size += _weight(message)
            inbox.cond.notify_all()

    def _shut(self, reason: str) -> None:
        if self._last_error is not None:
            reason = f"{reason}: {self._last_error.message}"
        error = Disconnected(reason)
        with self._lock:
            self._closed = error
            inboxes = list(self._inboxes.values())
            self._inboxes.clear()
            self._writable.notify_all()
        for inbox in inboxes:
            with inbox.cond:
                inbox.closed = error
                inbox.cond.notify_all()
        try:
            self._sock.close()
        finally:
            self._wake_r.close()
            self._wake_w.close()

    @property
    def closed(self) -> Optional[TcpTaskError]:
        """Why the connection is closed, or None while it is open."""
        return self._closed

    @property
    def last_error(self) -> Optional[TaskError]:
        """The server's last ``Error`` frame without id, if one came."""
        return self._last_error


def _handshake(sock, hello: wire.Hello, deadline: float) -> Welcome:
    """Sends the hello and reads the answer (blocking, before the I/O thread
    starts)."""

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConnectError("no answer to the handshake in time; is it a tcp-task server?")
        return left

    sock.settimeout(remaining())
    try:
        sock.sendall(wire.frame(wire.encode_hello(hello)))
        head = _read_exactly(sock, 4, remaining)
        (length,) = struct.unpack(">I", head)
        if length > wire.DEFAULT_MAX_FRAME_LEN:
            raise ConnectError(
                f"the server's first frame claims {length} bytes: not a tcp-task server?"
            )
        body = _read_exactly(sock, length, remaining)
    except socket.timeout:
        raise ConnectError("no answer to the handshake in time; is it a tcp-task server?") from None
    except ssl.SSLError as e:
        raise ConnectError(f"TLS failed during the handshake: {e.reason or e}") from None
    except OSError as e:
        raise ConnectError(f"the connection failed during the handshake: {e}") from None
    try:
        answer = wire.decode_server(body)
    except wire.DecodeError as e:
        raise ConnectError(
            f"the server's answer does not decode ({e}); is it a tcp-task server, with the "
            "same TLS setting?"
        ) from None
    if isinstance(answer, Error):
        raise RemoteError(answer.error)
    if not isinstance(answer, Welcome):
        raise ConnectError(f"unexpected first frame from the server: {answer!r}")
    return answer


def _read_exactly(sock, n: int, remaining) -> bytes:
    data = bytearray()
    while len(data) < n:
        sock.settimeout(remaining())
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectError(
                "the server closed the connection during the handshake "
                "(is it a tcp-task server, with the same TLS setting?)"
            )
        data += chunk
    return bytes(data)
