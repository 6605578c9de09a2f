"""Misbehaving clients for scripts/faults/clients.sh, all at once.

    python3 clients.py HOST:PORT IMAGE DIR IDLE FLOOD SECONDS

Opens IDLE connections that shake hands and then sit idle, writes
DIR/ready, waits for DIR/go, then until DIR/stop appears (at most SECONDS)
runs side by side:
- clients that vanish mid-stream: submit a task that streams output, read
  a little, close with SO_LINGER 0 (the server sees a RST);
- half-open connections: a partial hello and nothing more (the server's
  handshake timeout must close them), and clients that submit a task and
  shut their sending side (FIN) while the task streams;
- clients that never read: a small receive buffer, a task writing 20 MB,
  and no read at all;
- a flood: FLOOD more connections past the server's max_connections, held
  open, each counted as refused (the server closed it) or accepted.
Prints one JSON line of counts. Uses the Python client's wire format
(clients/python) for the frames; no threads per connection.
"""

import json
import os
import socket
import struct
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

from tcp_task_client import wire  # noqa: E402
from tcp_task_client.client import _handshake  # noqa: E402

host, port = sys.argv[1].rsplit(":", 1)
ADDR = (host, int(port))
IMAGE, DIR = sys.argv[2], sys.argv[3]
IDLE, FLOOD, SECONDS = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
counts = {"idle_open": 0, "idle_closed_early": 0, "rst": 0, "half_hello": 0,
          "half_closed": 0, "never_read": 0, "flood_accepted": 0, "flood_refused": 0,
          "errors": 0}
lock = threading.Lock()


def count(key, n=1):
    with lock:
        counts[key] += n


def connect(rcvbuf=None, handshake=True):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(ADDR)
    if handshake:
        _handshake(s, wire.Hello("fault-client"), time.monotonic() + 10)
    return s


def submit(s, request, command):
    spec = wire.TaskSpec.image(IMAGE, command)
    s.sendall(wire.frame(wire.encode_client(wire.Submit(request, spec))))


# Every loop counts a failed attempt and goes on: once the flood has taken
# the last places, new connections are refused (Busy) like any other.
def vanishing(stop):
    while not stop.is_set():
        try:
            s = connect()
            submit(s, 1, ["lines", "400", "5"])
            s.recv(2048)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            count("rst")
        except Exception:
            count("errors")
        time.sleep(0.1)


def half_open(stop, held):
    hello = wire.frame(wire.encode_hello(wire.Hello("half-open")))
    while not stop.is_set():
        try:
            s = connect(handshake=False)
            s.sendall(hello[:5])
            held.append(s)
            count("half_hello")
            s = connect()
            submit(s, 1, ["lines", "100", "20"])
            s.shutdown(socket.SHUT_WR)
            held.append(s)
            count("half_closed")
        except Exception:
            count("errors")
        time.sleep(0.5)


def never_reading(stop, held):
    while not stop.is_set() and counts["never_read"] < 8:
        try:
            s = connect(rcvbuf=4096)
            submit(s, 1, ["randbytes", "20000000", "1"])
            held.append(s)
            count("never_read")
        except Exception:
            count("errors")
        time.sleep(1)


def flood(held):
    for _ in range(FLOOD):
        try:
            s = connect()
            held.append(s)
            count("flood_accepted")
        except Exception:
            # Refused past max_connections: a Busy error in place of the
            # welcome, or the connection closed.
            count("flood_refused")


def main():
    idle = []
    for _ in range(IDLE):
        try:
            idle.append(connect())
        except Exception:
            count("errors")
    counts["idle_open"] = len(idle)
    open(os.path.join(DIR, "ready"), "w").close()
    while not os.path.exists(os.path.join(DIR, "go")):
        time.sleep(0.1)
    stop = threading.Event()
    held = []
    workers = [threading.Thread(target=vanishing, args=(stop,)),
               threading.Thread(target=half_open, args=(stop, held)),
               threading.Thread(target=never_reading, args=(stop, held)),
               threading.Thread(target=flood, args=(held,))]
    for w in workers:
        w.start()
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline and not os.path.exists(os.path.join(DIR, "stop")):
        time.sleep(0.2)
    stop.set()
    for w in workers:
        w.join()
    # Idle connections the server closed meanwhile (idle_timeout is 300 s
    # by default: none should be).
    for s in idle:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                count("idle_closed_early")
        except BlockingIOError:
            pass
        except OSError:
            count("idle_closed_early")
    print(json.dumps(counts), flush=True)
    for s in idle + held:
        s.close()


main()
