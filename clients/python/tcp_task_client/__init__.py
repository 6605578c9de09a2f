"""A client for tcp-task servers, in Python, standard library only.

Written from the protocol's specification, docs/PROTOCOL.md::

    from tcp_task_client import Client, TaskSpec

    with Client.connect("127.0.0.1:7070") as client:
        result = client.run(TaskSpec.image("tcp-task-examples:0.1.0", ["sum", "1", "2"]))
        print(result.stdout, result.outcome.exit_status())

        task_id = client.run_detached(TaskSpec.image("tcp-task-examples:0.1.0", ["sleep", "5"]))
        print(client.wait(task_id).exit_status())
"""

from .client import (
    Client,
    ConnectError,
    Disconnected,
    RemoteError,
    Task,
    TaskFailed,
    TaskOutput,
    TcpTaskError,
    parse_address,
    tls_context,
)
from .wire import (
    Accepted,
    CatalogEntryInfo,
    Created,
    Ending,
    EngineStatus,
    ErrorKind,
    HttpTask,
    ImageTask,
    Limits,
    NamedTask,
    Offsets,
    Outcome,
    Output,
    OutputStream,
    NodeStatus,
    PoolStatus,
    Progress,
    Pulling,
    Queued,
    RegistryAuth,
    Resumed,
    Scheduling,
    ServerStatus,
    Started,
    StateEnded,
    StateFailed,
    StateRunning,
    TaskError,
    TaskId,
    TaskInfo,
    TaskSpec,
    Usage,
    TaskState,
)

__version__ = "0.1.0"

__all__ = [
    "Accepted",
    "CatalogEntryInfo",
    "Client",
    "ConnectError",
    "Created",
    "Disconnected",
    "Ending",
    "EngineStatus",
    "ErrorKind",
    "HttpTask",
    "ImageTask",
    "Limits",
    "NamedTask",
    "Offsets",
    "Outcome",
    "Output",
    "OutputStream",
    "NodeStatus",
    "PoolStatus",
    "Progress",
    "Pulling",
    "Queued",
    "RegistryAuth",
    "RemoteError",
    "Resumed",
    "Scheduling",
    "ServerStatus",
    "Started",
    "StateEnded",
    "StateFailed",
    "StateRunning",
    "Task",
    "TaskError",
    "TaskFailed",
    "TaskId",
    "TaskInfo",
    "TaskOutput",
    "TaskSpec",
    "Usage",
    "TaskState",
    "TcpTaskError",
    "parse_address",
    "tls_context",
]
