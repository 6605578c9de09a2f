"""The tcp-task wire format: frames, values and messages.

Written from docs/PROTOCOL.md ("Frames", "Encoding of values", "Type
reference"); the section names below refer to it. Plain data and pure
functions: no sockets here.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Callable, List, Optional, Tuple, Union

MAGIC = b"TCPT"
PROTOCOL_VERSION = 2

#: The longest task id a server accepts; the ids it makes have 20 characters.
MAX_TASK_ID_LEN = 64

#: "What a client should accept": the largest frame body before the
#: Welcome arrives; afterwards, the Welcome's ``limits.max_frame_len``.
DEFAULT_MAX_FRAME_LEN = 1024 * 1024

#: The largest stdin chunk to send when the server announces none smaller.
MAX_CHUNK_LEN = 64 * 1024

#: Stdin bytes of one task sent and not yet credited back by ``StdinCredit``;
#: a chunk past it cancels the task.
STDIN_WINDOW = 256 * 1024


class DecodeError(ValueError):
    """Bytes that are not a valid message (the protocol calls this an error)."""


# ---------------------------------------------------------------------------
# Values ("Encoding of values")
# ---------------------------------------------------------------------------


class Writer:
    """Builds one frame body."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def varint(self, value: int) -> None:
        if value < 0:
            raise ValueError("a varint is never negative")
        if value <= 250:
            self.buf.append(value)
        elif value < 1 << 16:
            self.buf += b"\xfb" + struct.pack("<H", value)
        elif value < 1 << 32:
            self.buf += b"\xfc" + struct.pack("<I", value)
        elif value < 1 << 64:
            self.buf += b"\xfd" + struct.pack("<Q", value)
        else:
            raise ValueError(f"{value} does not fit in a u64")

    def signed(self, value: int) -> None:
        # zigzag: 0→0, -1→1, 1→2, -2→3, …
        self.varint(2 * value if value >= 0 else -2 * value - 1)

    def bool(self, value: bool) -> None:
        self.buf.append(1 if value else 0)

    def raw(self, data: bytes) -> None:
        self.buf += data

    def bytes(self, data: bytes) -> None:
        self.varint(len(data))
        self.buf += data

    def string(self, text: str) -> None:
        self.bytes(text.encode("utf-8"))

    def option(self, value, write: Callable) -> None:
        if value is None:
            self.buf.append(0)
        else:
            self.buf.append(1)
            write(value)

    def list(self, items, write: Callable) -> None:
        self.varint(len(items))
        for item in items:
            write(item)

    def pairs(self, items) -> None:
        self.list(items, lambda kv: (self.string(kv[0]), self.string(kv[1])))


class Reader:
    """Reads one frame body; every read checks that the bytes are there."""

    # The widest marker each integer type may carry.
    _WIDEST = {16: 0xFB, 32: 0xFC, 64: 0xFD}

    def __init__(self, body: bytes) -> None:
        self.body = memoryview(body)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.body):
            raise DecodeError(
                f"the message needs {n} more bytes at offset {self.pos}, "
                f"the body has {len(self.body) - self.pos}"
            )
        data = bytes(self.body[self.pos : self.pos + n])
        self.pos += n
        return data

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self, bits: int = 64) -> int:
        first = self.byte()
        if first <= 250:
            return first
        if first > self._WIDEST[bits]:
            raise DecodeError(f"varint marker {first:#04x} in a u{bits}")
        size = {0xFB: 2, 0xFC: 4, 0xFD: 8}[first]
        return int.from_bytes(self.take(size), "little")

    def signed(self, bits: int = 64) -> int:
        n = self.varint(bits)
        return n >> 1 if n % 2 == 0 else -((n + 1) >> 1)

    def bool(self) -> bool:
        b = self.byte()
        if b > 1:
            raise DecodeError(f"{b:#04x} is not a bool")
        return b == 1

    def bytes(self) -> bytes:
        return self.take(self.varint())

    def string(self) -> str:
        try:
            return self.bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"a string that is not UTF-8: {e}") from None

    def option(self, read: Callable):
        tag = self.byte()
        if tag == 0:
            return None
        if tag == 1:
            return read()
        raise DecodeError(f"{tag:#04x} is not an Option tag")

    def list(self, read: Callable) -> list:
        count = self.varint()
        # Each element takes at least one byte: a count beyond the body is a
        # lie, refused before any work.
        if count > len(self.body) - self.pos:
            raise DecodeError(f"a list of {count} elements in a shorter body")
        return [read() for _ in range(count)]

    def pairs(self) -> List[Tuple[str, str]]:
        return self.list(lambda: (self.string(), self.string()))

    def tag(self, names) -> int:
        tag = self.varint(32)
        if tag >= len(names):
            raise DecodeError(f"tag {tag} of a type with {len(names)} variants")
        return tag

    def end(self) -> None:
        left = len(self.body) - self.pos
        if left:
            raise DecodeError(f"{left} bytes after the message")


# ---------------------------------------------------------------------------
# Types ("Type reference")
# ---------------------------------------------------------------------------


class Ending(enum.IntEnum):
    EXITED = 0
    SIGNALED = 1
    TIMED_OUT = 2
    OOM_KILLED = 3
    CANCELLED = 4
    OUTPUT_LIMIT = 5


class ErrorKind(enum.IntEnum):
    BAD_REQUEST = 0
    POLICY_DENIED = 1
    BUSY = 2
    DUPLICATE_ID = 3
    UNKNOWN_REQUEST = 4
    UNKNOWN_TASK = 5
    IMAGE_NOT_FOUND = 6
    REGISTRY_AUTH = 7
    COMMAND_NOT_FOUND = 8
    COMMAND_NOT_INVOKABLE = 9
    ENGINE = 10
    SHUTTING_DOWN = 11
    UNAUTHORIZED = 12
    PROTOCOL = 13
    FRAME_TOO_LARGE = 14
    VERSION_MISMATCH = 15
    TIMEOUT = 16
    INTERNAL = 17
    NO_SUCH_TASK = 18
    DETACHED = 19
    NOT_LISTENING = 20
    TASK_EXITED = 21
    TASK_FAILED = 22
    UNSUPPORTED = 23
    UNSCHEDULABLE = 24

    def exit_status(self) -> int:
        """"Exit statuses for a command-line client"."""
        if self is ErrorKind.COMMAND_NOT_FOUND:
            return 127
        if self is ErrorKind.COMMAND_NOT_INVOKABLE:
            return 126
        return 125


class OutputStream(enum.IntEnum):
    STDOUT = 0
    STDERR = 1


class TaskId(str):
    """A task's server-wide id (``TaskId``): a ``str``, 20 characters of
    ``a``–``z`` and ``2``–``7`` when the server made it. Any connection may
    attach to the task, wait for it, kill or remove it by this id."""

    def __repr__(self) -> str:
        return f"TaskId({str.__repr__(self)})"


@dataclass
class Offsets:
    """How many bytes of each output stream a client already has: where an
    ``Attach`` starts its replay."""

    stdout: int = 0
    stderr: int = 0


@dataclass
class Limits:
    max_frame_len: int
    max_chunk_len: int
    max_tasks_per_connection: int
    idle_timeout_ms: int


@dataclass
class Hello:
    client: str
    token: Optional[str] = None
    version: int = PROTOCOL_VERSION
    magic: bytes = MAGIC


@dataclass
class Welcome:
    version: int
    server: str
    limits: Limits


@dataclass
class ImageTask:
    """``Task::Image``: ``command`` is the argv; empty runs the image's default."""

    image: str
    command: List[str] = field(default_factory=list)


@dataclass
class NamedTask:
    """``Task::Named``: a task of the server's catalog."""

    name: str
    args: List[str] = field(default_factory=list)
    params: Optional[str] = None


@dataclass
class HttpTask:
    """``Task::Http``: POST ``{"params": params}`` to ``/task/{task}`` on ``port``
    of the image's own server (``command``, or the image's default); the
    answer's body is the task's stdout."""

    image: str
    port: int
    task: str
    params: Optional[str] = None
    command: List[str] = field(default_factory=list)


@dataclass
class RegistryAuth:
    username: str
    password: str = field(repr=False)
    server: Optional[str] = None


@dataclass
class TaskSpec:
    task: Union[ImageTask, NamedTask, HttpTask]
    env: List[Tuple[str, str]] = field(default_factory=list)
    workdir: Optional[str] = None
    user: Optional[str] = None
    stdin: bool = False
    memory_bytes: Optional[int] = None
    nano_cpus: Optional[int] = None
    pids_limit: Optional[int] = None
    network: Optional[str] = None
    read_only_root: bool = False
    timeout_ms: Optional[int] = None
    labels: List[Tuple[str, str]] = field(default_factory=list)
    registry_auth: Optional[RegistryAuth] = None

    @classmethod
    def image(cls, image: str, command=(), **settings) -> "TaskSpec":
        return cls(ImageTask(image, list(command)), **settings)

    @classmethod
    def named(cls, name: str, args=(), params: Optional[str] = None, **settings) -> "TaskSpec":
        return cls(NamedTask(name, list(args), params), **settings)

    @classmethod
    def http(cls, image: str, port: int, task: str, params: Optional[str] = None, **settings) -> "TaskSpec":
        return cls(HttpTask(image, port, task, params), **settings)


@dataclass
class Queued:
    position: int


@dataclass
class Pulling:
    layer: str
    status: str
    current: Optional[int]
    total: Optional[int]


@dataclass
class Created:
    container: str


@dataclass
class Started:
    pass


@dataclass
class Resumed:
    """Made only by a client library that reconnects by itself (this one
    does not); a server never sends it."""

    attempts: int


@dataclass
class Scheduling:
    """On a Docker Swarm: the scheduler's state for the task (``pending``,
    ``assigned``, ...) and the node it was placed on, once known."""

    state: str
    node: Optional[str]


ProgressEvent = Union[Queued, Pulling, Created, Started, Resumed, Scheduling]


@dataclass
class Usage:
    """What a task used: CPU time in user and kernel mode (microseconds),
    and its peak memory (bytes)."""

    cpu_user_us: int
    cpu_system_us: int
    peak_memory_bytes: int


@dataclass
class Outcome:
    ending: Ending
    exit_code: Optional[int]
    signal: Optional[int]
    duration_ms: int
    output_truncated: bool
    usage: Optional["Usage"] = None

    def exit_status(self) -> int:
        """"Exit statuses for a command-line client", for a task that ran."""
        if self.ending is Ending.EXITED:
            return self.exit_code if self.exit_code is not None else 125
        if self.ending is Ending.SIGNALED:
            return 128 + (self.signal if self.signal is not None else 9)
        return {
            Ending.TIMED_OUT: 124,
            Ending.OOM_KILLED: 137,
            Ending.CANCELLED: 130,
            Ending.OUTPUT_LIMIT: 125,
        }[self.ending]


@dataclass
class TaskError:
    kind: ErrorKind
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class EngineStatus:
    reachable: bool
    version: Optional[str]
    api_version: Optional[str]
    error: Optional[str]


@dataclass
class PoolStatus:
    key: str
    warm: int
    in_use: int
    hits: int
    misses: int


@dataclass
class NodeStatus:
    """A Swarm node, as the Swarm backend's status lists it."""

    name: str
    state: str
    availability: str
    manager: bool
    nano_cpus: int
    memory_bytes: int
    tasks: int


@dataclass
class ServerStatus:
    server: str
    protocol_version: int
    uptime_ms: int
    connections: int
    running: int
    queued: int
    finished: int
    failed: int
    engine: EngineStatus
    catalog_size: int
    pools: List[PoolStatus]
    retained: int
    retained_bytes: int
    nodes: List[NodeStatus]


@dataclass
class CatalogEntryInfo:
    name: str
    description: str
    image: str
    command: List[str]
    memory_bytes: Optional[int]
    nano_cpus: Optional[int]
    timeout_ms: Optional[int]


# ``TaskState``: where a listed task is in its life.


@dataclass
class StateRunning:
    """``TaskState::Running``: waiting for a slot, starting or running."""


@dataclass
class StateEnded:
    """``TaskState::Ended``: it ran and ended; its result is kept."""

    outcome: Outcome


@dataclass
class StateFailed:
    """``TaskState::Failed``: it could not run."""

    error: TaskError


TaskState = Union[StateRunning, StateEnded, StateFailed]


@dataclass
class TaskInfo:
    """One task of a ``TaskList``."""

    id: TaskId
    image: str
    command: List[str]
    detached: bool
    created_ms: int
    state: TaskState
    output_bytes: int

    @property
    def running(self) -> bool:
        return isinstance(self.state, StateRunning)


# Client messages (``ClientMessage``), in tag order.


@dataclass
class Submit:
    id: int
    spec: TaskSpec
    detach: bool = False


@dataclass
class Stdin:
    id: int
    chunk: bytes


@dataclass
class StdinClose:
    id: int


@dataclass
class Cancel:
    id: int


@dataclass
class Ping:
    id: int
    payload: bytes = b""


@dataclass
class Status:
    id: int


@dataclass
class ListCatalog:
    id: int


@dataclass
class Attach:
    id: int
    task: str
    from_: Offsets = field(default_factory=Offsets)
    follow: bool = True


@dataclass
class Wait:
    id: int
    task: str


@dataclass
class Kill:
    id: int
    task: str
    signal: int = 9


@dataclass
class Remove:
    id: int
    task: str
    force: bool = False


@dataclass
class List_:
    """``List`` (named so as not to hide ``typing.List``)."""

    id: int
    all: bool = False


CLIENT_MESSAGES = (
    Submit,
    Stdin,
    StdinClose,
    Cancel,
    Ping,
    Status,
    ListCatalog,
    Attach,
    Wait,
    Kill,
    Remove,
    List_,
)

# Server messages (``ServerMessage``), in tag order. ``Welcome`` is above.


@dataclass
class Accepted:
    id: int
    task: TaskId


@dataclass
class Progress:
    id: int
    event: ProgressEvent


@dataclass
class Output:
    id: int
    stream: OutputStream
    chunk: bytes


@dataclass
class Exited:
    id: int
    outcome: Outcome


@dataclass
class Failed:
    id: int
    error: TaskError


@dataclass
class Pong:
    id: int
    payload: bytes


@dataclass
class StatusReply:
    id: int
    status: ServerStatus


@dataclass
class CatalogReply:
    id: int
    entries: List[CatalogEntryInfo]


@dataclass
class Done:
    """A ``Kill`` or ``Remove`` was carried out."""

    id: int


@dataclass
class TaskList:
    id: int
    tasks: List[TaskInfo]


@dataclass
class Error:
    """Not a task's ending: ``id`` None concerns the connection (which the
    server then closes); with an id it concerns one frame and ends nothing."""

    id: Optional[int]
    error: TaskError


@dataclass
class StdinCredit:
    """``bytes`` more of the task's stdin may be sent (see ``STDIN_WINDOW``)."""

    id: int
    bytes: int


SERVER_MESSAGES = (
    Welcome,
    Accepted,
    Progress,
    Output,
    Exited,
    Failed,
    Pong,
    StatusReply,
    CatalogReply,
    Done,
    TaskList,
    Error,
    StdinCredit,
)

ServerMessage = Union[
    Welcome,
    Accepted,
    Progress,
    Output,
    Exited,
    Failed,
    Pong,
    StatusReply,
    CatalogReply,
    Done,
    TaskList,
    Error,
    StdinCredit,
]
ClientMessage = Union[
    Submit, Stdin, StdinClose, Cancel, Ping, Status, ListCatalog, Attach, Wait, Kill, Remove, List_
]


# ---------------------------------------------------------------------------
# Encoding what the client sends
# ---------------------------------------------------------------------------


def _write_spec(w: Writer, spec: TaskSpec) -> None:
    task = spec.task
    if isinstance(task, ImageTask):
        w.varint(0)
        w.string(task.image)
        w.list(task.command, w.string)
    elif isinstance(task, NamedTask):
        w.varint(1)
        w.string(task.name)
        w.list(task.args, w.string)
        w.option(task.params, w.string)
    elif isinstance(task, HttpTask):
        w.varint(2)
        w.string(task.image)
        w.varint(task.port)
        w.string(task.task)
        w.option(task.params, w.string)
        w.list(task.command, w.string)
    else:
        raise TypeError(f"not a task: {task!r}")
    w.pairs(spec.env)
    w.option(spec.workdir, w.string)
    w.option(spec.user, w.string)
    w.bool(spec.stdin)
    w.option(spec.memory_bytes, w.varint)
    w.option(spec.nano_cpus, w.varint)
    w.option(spec.pids_limit, w.signed)
    w.option(spec.network, w.string)
    w.bool(spec.read_only_root)
    w.option(spec.timeout_ms, w.varint)
    w.pairs(spec.labels)

    def auth(a: RegistryAuth) -> None:
        w.string(a.username)
        w.string(a.password)
        w.option(a.server, w.string)

    w.option(spec.registry_auth, auth)


def encode_hello(hello: Hello) -> bytes:
    """The body of the handshake's first frame (a struct: no tag)."""
    w = Writer()
    w.raw(hello.magic)
    w.varint(hello.version)
    w.string(hello.client)
    w.option(hello.token, w.string)
    return bytes(w.buf)


def encode_client(message: ClientMessage) -> bytes:
    """The body of a frame carrying ``message``."""
    w = Writer()
    w.varint(CLIENT_MESSAGES.index(type(message)))
    w.varint(message.id)
    if isinstance(message, Submit):
        _write_spec(w, message.spec)
        w.bool(message.detach)
    elif isinstance(message, Stdin):
        w.bytes(message.chunk)
    elif isinstance(message, Ping):
        w.bytes(message.payload)
    elif isinstance(message, Attach):
        _write_task_id(w, message.task)
        w.varint(message.from_.stdout)
        w.varint(message.from_.stderr)
        w.bool(message.follow)
    elif isinstance(message, (Wait, Kill, Remove)):
        _write_task_id(w, message.task)
        if isinstance(message, Kill):
            w.signed(message.signal)
        elif isinstance(message, Remove):
            w.bool(message.force)
    elif isinstance(message, List_):
        w.bool(message.all)
    return bytes(w.buf)


def check_task_id(task) -> str:
    """``task`` if it can be sent as a task id: a non-empty ``str`` of at
    most ``MAX_TASK_ID_LEN`` bytes (the server answers any id it does not
    know with ``NoSuchTask``); else ``ValueError``."""
    if not isinstance(task, str) or not task:
        raise ValueError(f"{task!r} is not a task id")
    if len(task.encode("utf-8")) > MAX_TASK_ID_LEN:
        raise ValueError(f"a task id has at most {MAX_TASK_ID_LEN} characters: {task!r}")
    return task


def _write_task_id(w: Writer, task: str) -> None:
    w.string(check_task_id(task))


def frame(body: bytes) -> bytes:
    """A body with its length prefix."""
    return struct.pack(">I", len(body)) + body


# ---------------------------------------------------------------------------
# Decoding what the server sends (and, for tests, what the client sends)
# ---------------------------------------------------------------------------


def _read_limits(r: Reader) -> Limits:
    return Limits(r.varint(32), r.varint(32), r.varint(32), r.varint())


def _read_progress(r: Reader) -> ProgressEvent:
    tag = r.tag(("Queued", "Pulling", "Created", "Started", "Resumed", "Scheduling"))
    if tag == 0:
        return Queued(r.varint(32))
    if tag == 1:
        return Pulling(r.string(), r.string(), r.option(r.varint), r.option(r.varint))
    if tag == 2:
        return Created(r.string())
    if tag == 3:
        return Started()
    if tag == 4:
        return Resumed(r.varint(32))
    return Scheduling(r.string(), r.option(r.string))


def _read_outcome(r: Reader) -> Outcome:
    ending = Ending(r.tag(Ending))
    return Outcome(
        ending,
        r.option(lambda: r.signed(32)),
        r.option(lambda: r.signed(32)),
        r.varint(),
        r.bool(),
        r.option(lambda: Usage(r.varint(), r.varint(), r.varint())),
    )


def _read_error(r: Reader) -> TaskError:
    return TaskError(ErrorKind(r.tag(ErrorKind)), r.string())


def _read_status(r: Reader) -> ServerStatus:
    server = r.string()
    protocol_version = r.varint(16)
    counts = [r.varint() for _ in range(6)]
    engine = EngineStatus(
        r.bool(), r.option(r.string), r.option(r.string), r.option(r.string)
    )
    catalog_size = r.varint()
    pools = r.list(
        lambda: PoolStatus(r.string(), r.varint(), r.varint(), r.varint(), r.varint())
    )
    retained, retained_bytes = r.varint(), r.varint()
    nodes = r.list(
        lambda: NodeStatus(
            r.string(), r.string(), r.string(), r.bool(), r.varint(), r.varint(), r.varint()
        )
    )
    return ServerStatus(
        server,
        protocol_version,
        *counts,
        engine,
        catalog_size,
        pools,
        retained,
        retained_bytes,
        nodes,
    )


def _read_task_id(r: Reader) -> TaskId:
    return TaskId(r.string())


def _read_task_info(r: Reader) -> TaskInfo:
    id = _read_task_id(r)
    image = r.string()
    command = r.list(r.string)
    detached = r.bool()
    created_ms = r.varint()
    tag = r.tag(("Running", "Ended", "Failed"))
    if tag == 0:
        state = StateRunning()
    elif tag == 1:
        state = StateEnded(_read_outcome(r))
    else:
        state = StateFailed(_read_error(r))
    return TaskInfo(id, image, command, detached, created_ms, state, r.varint())


def _read_entry(r: Reader) -> CatalogEntryInfo:
    return CatalogEntryInfo(
        r.string(),
        r.string(),
        r.string(),
        r.list(r.string),
        r.option(r.varint),
        r.option(r.varint),
        r.option(r.varint),
    )


def decode_server(body: bytes) -> ServerMessage:
    """The message of one frame body from the server."""
    r = Reader(body)
    tag = r.tag(SERVER_MESSAGES)
    if tag == 0:
        message = Welcome(r.varint(16), r.string(), _read_limits(r))
    elif tag == SERVER_MESSAGES.index(Error):
        message = Error(r.option(r.varint), _read_error(r))
    else:
        id = r.varint()
        if tag == 1:
            message = Accepted(id, _read_task_id(r))
        elif tag == 2:
            message = Progress(id, _read_progress(r))
        elif tag == 3:
            message = Output(id, OutputStream(r.tag(OutputStream)), r.bytes())
        elif tag == 4:
            message = Exited(id, _read_outcome(r))
        elif tag == 5:
            message = Failed(id, _read_error(r))
        elif tag == 6:
            message = Pong(id, r.bytes())
        elif tag == 7:
            message = StatusReply(id, _read_status(r))
        elif tag == 8:
            message = CatalogReply(id, r.list(lambda: _read_entry(r)))
        elif tag == 9:
            message = Done(id)
        elif tag == 10:
            message = TaskList(id, r.list(lambda: _read_task_info(r)))
        else:
            message = StdinCredit(id, r.varint(32))
    r.end()
    return message


def _read_spec(r: Reader) -> TaskSpec:
    tag = r.tag(("Image", "Named", "Http"))
    if tag == 0:
        task = ImageTask(r.string(), r.list(r.string))
    elif tag == 1:
        task = NamedTask(r.string(), r.list(r.string), r.option(r.string))
    else:
        task = HttpTask(r.string(), r.varint(16), r.string(), r.option(r.string), r.list(r.string))
    return TaskSpec(
        task,
        env=r.pairs(),
        workdir=r.option(r.string),
        user=r.option(r.string),
        stdin=r.bool(),
        memory_bytes=r.option(r.varint),
        nano_cpus=r.option(r.varint),
        pids_limit=r.option(r.signed),
        network=r.option(r.string),
        read_only_root=r.bool(),
        timeout_ms=r.option(r.varint),
        labels=r.pairs(),
        registry_auth=r.option(
            lambda: RegistryAuth(r.string(), r.string(), r.option(r.string))
        ),
    )


def decode_client(body: bytes) -> ClientMessage:
    """The message of one frame body from a client (for tests and tools)."""
    r = Reader(body)
    kind = CLIENT_MESSAGES[r.tag(CLIENT_MESSAGES)]
    id = r.varint()
    if kind is Submit:
        message = Submit(id, _read_spec(r), r.bool())
    elif kind in (Stdin, Ping):
        message = kind(id, r.bytes())
    elif kind is Attach:
        message = Attach(id, _read_task_id(r), Offsets(r.varint(), r.varint()), r.bool())
    elif kind is Wait:
        message = Wait(id, _read_task_id(r))
    elif kind is Kill:
        message = Kill(id, _read_task_id(r), r.signed(32))
    elif kind is Remove:
        message = Remove(id, _read_task_id(r), r.bool())
    elif kind is List_:
        message = List_(id, r.bool())
    else:
        message = kind(id)
    r.end()
    return message


def decode_hello(body: bytes) -> Hello:
    r = Reader(body)
    magic = r.take(4)
    version = r.varint(16)
    hello = Hello(r.string(), r.option(r.string), version, magic)
    r.end()
    return hello


def to_plain(value):
    """A message as plain Python data (dicts, lists, str, int, bytes), e.g.
    for JSON output."""
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
