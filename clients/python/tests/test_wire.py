"""The codec against the specification's own examples.

Every ``message``/``frame`` pair of docs/PROTOCOL.md is decoded here; the
result, written in the document's notation, must be the message the document
states, and what the client sends must re-encode to the same bytes. No
server needed.
"""

import enum
import os
import re
import struct
import unittest
from dataclasses import fields, is_dataclass

from tcp_task_client import wire

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "PROTOCOL.md")


def camel(member: enum.Enum) -> str:
    return "".join(part.capitalize() for part in member.name.split("_"))


def rust_str(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif c == "\0":
            out.append("\\0")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{{{ord(c):x}}}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def rust_bytes(data: bytes) -> str:
    out = []
    for b in data:
        c = chr(b)
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif b == 0:
            out.append("\\0")
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append(f"\\x{b:02x}")
    return 'b"' + "".join(out) + '"'


# How the document names the Python classes that differ from the Rust ones.
RUST_NAMES = {
    "ImageTask": "Image",
    "NamedTask": "Named",
    "HttpTask": "Http",
    "List_": "List",
    "StateRunning": "Running",
    "StateEnded": "Ended",
    "StateFailed": "Failed",
}

# Enum variants with one unnamed field, which Rust shows as ``Name(value)``.
TUPLE_VARIANTS = ("StateEnded", "StateFailed")


def show(value, optional_fields=()) -> str:
    """A value in the document's notation (Rust's ``Debug``)."""
    if value is None:
        return "None"
    if isinstance(value, wire.TaskId):
        return f"TaskId({rust_str(value)})"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return camel(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return rust_str(value)
    if isinstance(value, bytes):
        return rust_bytes(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(show(v) for v in value) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if is_dataclass(value):
        name = RUST_NAMES.get(type(value).__name__, type(value).__name__)
        if type(value).__name__ in TUPLE_VARIANTS:
            (only,) = fields(value)
            return f"{name}({show(getattr(value, only.name))})"
        parts = []
        for f in fields(value):
            v = getattr(value, f.name)
            text = show(v)
            if f.name in OPTIONAL.get(type(value).__name__, ()) and v is not None:
                text = f"Some({text})"
            # ``from_``: a Python name for the field ``from``.
            parts.append(f"{f.name.rstrip('_')}: {text}")
        if not parts:
            return name
        return name + " { " + ", ".join(parts) + " }"
    raise TypeError(value)


# Fields whose type is Option<T> (a Python None/value needs Some(…) shown).
OPTIONAL = {
    "TaskSpec": ("workdir", "user", "memory_bytes", "nano_cpus", "pids_limit", "network",
                 "timeout_ms", "registry_auth"),
    "NamedTask": ("params",),
    "HttpTask": ("params",),
    "RegistryAuth": ("server",),
    "Pulling": ("current", "total"),
    "Scheduling": ("node",),
    "Outcome": ("exit_code", "signal", "usage"),
    "EngineStatus": ("version", "api_version", "error"),
    "CatalogEntryInfo": ("memory_bytes", "nano_cpus", "timeout_ms"),
    "Error": ("id",),
    "Hello": ("token",),
}


def show_message(message) -> str:
    if isinstance(message, wire.Hello):
        token = "None" if message.token is None else f"Some({rust_str(message.token)})"
        return (f"Hello {{ magic: {rust_bytes(message.magic)}, version: {message.version}, "
                f"client: {rust_str(message.client)}, token: {token} }}")
    if isinstance(message, wire.Welcome):
        return f"ServerMessage::Welcome({show(message)})"
    side = "ClientMessage" if isinstance(message, wire.CLIENT_MESSAGES) else "ServerMessage"
    return f"{side}::{show(message)}"


def squeeze(text: str) -> str:
    """The notation without layout: whitespace outside strings and commas
    before a closing bracket go."""
    out = []
    in_string = False
    i = 0
    while i < len(text):
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif c.isspace():
            pass
        elif c in "}])":
            if out and out[-1] == ",":
                out.pop()
            out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def examples():
    """(line, stated message, frame bytes) for each pair in the document."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    blocks = [(m.group(1), m.group(2), text[: m.start()].count("\n") + 1)
              for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)]
    found = []
    for (info, body, line), nxt in zip(blocks, blocks[1:]):
        if info != "message":
            continue
        assert nxt[0] == "frame", f"line {line}: a message without its frame"
        data = bytearray()
        for row in nxt[1].splitlines():
            hex_part = row[6:].split("  ")[0]
            data += bytes.fromhex(hex_part)
        found.append((line, body.strip(), bytes(data)))
    return found


@unittest.skipUnless(os.path.exists(DOC), "docs/PROTOCOL.md is not beside this checkout")
class TheDocumentsExamples(unittest.TestCase):
    def test_every_example_decodes_to_the_stated_message(self):
        cases = examples()
        self.assertGreater(len(cases), 30)
        for line, stated, frame in cases:
            with self.subTest(line=line):
                (length,) = struct.unpack(">I", frame[:4])
                body = frame[4:]
                self.assertEqual(length, len(body))
                if stated.startswith("Hello"):
                    message = wire.decode_hello(body)
                    again = wire.encode_hello(message)
                elif stated.startswith("ClientMessage::"):
                    message = wire.decode_client(body)
                    again = wire.encode_client(message)
                else:
                    message = wire.decode_server(body)
                    again = body  # the client does not encode server messages
                self.assertEqual(squeeze(show_message(message)), squeeze(stated))
                self.assertEqual(again, body)


class Values(unittest.TestCase):
    def test_varints_take_the_shortest_form_by_value(self):
        cases = {0: "00", 250: "fa", 251: "fbfb00", 412: "fb9c01", 5000: "fb8813",
                 65535: "fbffff", 65536: "fc00000100", 300000: "fce0930400",
                 2**32: "fd0000000001000000"}
        for value, hex_ in cases.items():
            w = wire.Writer()
            w.varint(value)
            self.assertEqual(bytes(w.buf).hex(), hex_, value)
            self.assertEqual(wire.Reader(bytes(w.buf)).varint(), value)

    def test_zigzag(self):
        for value, hex_ in {0: "00", -1: "01", 1: "02", -2: "03", 137: "fb1201", 9: "12"}.items():
            w = wire.Writer()
            w.signed(value)
            self.assertEqual(bytes(w.buf).hex(), hex_)
            self.assertEqual(wire.Reader(bytes(w.buf)).signed(), value)

    def test_a_marker_too_wide_for_the_field_is_an_error(self):
        with self.assertRaises(wire.DecodeError):
            wire.Reader(bytes.fromhex("fc01000000")).varint(16)
        with self.assertRaises(wire.DecodeError):
            wire.Reader(bytes.fromhex("fe")).varint(64)
        # A longer form within the field's width reads.
        self.assertEqual(wire.Reader(bytes.fromhex("fb0500")).varint(16), 5)

    def test_trailing_bytes_and_bad_tags_are_errors(self):
        # Accepted{7, "a"} decodes; with a stray byte after it, it does not.
        self.assertEqual(wire.decode_server(bytes.fromhex("01070161")),
                         wire.Accepted(7, wire.TaskId("a")))
        with self.assertRaises(wire.DecodeError):
            wire.decode_server(bytes.fromhex("0107016100"))
        with self.assertRaises(wire.DecodeError):
            wire.decode_server(bytes.fromhex("0c07"))  # tag 12: no such message
        with self.assertRaises(wire.DecodeError):
            wire.decode_server(bytes.fromhex("04010002"))  # Exited, bad Option tag 2
        with self.assertRaises(wire.DecodeError):
            wire.decode_server(bytes.fromhex("0b01"))  # Error: body ends too soon
        with self.assertRaises(wire.DecodeError):
            wire.decode_server(bytes.fromhex("0b000d01ff"))  # a message that is not UTF-8
        with self.assertRaises(wire.DecodeError):
            wire.decode_server(bytes.fromhex("0a0101"))  # TaskList: its one task is missing
        with self.assertRaises(wire.DecodeError):
            wire.decode_client(bytes.fromhex("0b0102"))  # List with a bool of 2

    def test_the_new_requests_round_trip(self):
        messages = [
            wire.Submit(1, wire.TaskSpec.image("img", ["true"]), detach=True),
            wire.Attach(2, wire.TaskId("abc"), wire.Offsets(2**40, 70000), follow=False),
            wire.Wait(3, "abc"),
            wire.Kill(4, "abc", signal=-1),
            wire.Remove(5, "abc", force=True),
            wire.List_(6, all=False),
        ]
        for message in messages:
            with self.subTest(message=message):
                body = wire.encode_client(message)
                self.assertEqual(wire.decode_client(body), message)
        # The task id is a plain string on the wire: length, then UTF-8.
        self.assertEqual(wire.encode_client(wire.Wait(3, "abc")).hex(), "080303616263")

    def test_task_ids_that_cannot_be_sent_are_refused_before_sending(self):
        for bad in ("", "x" * (wire.MAX_TASK_ID_LEN + 1), None, 7):
            with self.assertRaises(ValueError):
                wire.encode_client(wire.Wait(1, bad))
        self.assertEqual(wire.check_task_id("x" * wire.MAX_TASK_ID_LEN), "x" * 64)

    def test_exit_statuses(self):
        o = lambda ending, code=None, sig=None: wire.Outcome(ending, code, sig, 0, False)
        E = wire.Ending
        self.assertEqual(o(E.EXITED, 42).exit_status(), 42)
        self.assertEqual(o(E.SIGNALED, 137, 9).exit_status(), 137)
        self.assertEqual(o(E.SIGNALED, 143, 15).exit_status(), 143)
        self.assertEqual(o(E.TIMED_OUT).exit_status(), 124)
        self.assertEqual(o(E.OOM_KILLED, 137, 9).exit_status(), 137)
        self.assertEqual(o(E.CANCELLED).exit_status(), 130)
        self.assertEqual(o(E.OUTPUT_LIMIT).exit_status(), 125)
        K = wire.ErrorKind
        self.assertEqual(K.COMMAND_NOT_FOUND.exit_status(), 127)
        self.assertEqual(K.COMMAND_NOT_INVOKABLE.exit_status(), 126)
        self.assertEqual(K.BUSY.exit_status(), 125)


if __name__ == "__main__":
    unittest.main()
