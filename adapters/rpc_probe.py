"""Asking a ggml RPC worker (ggml-rpc-server) for its devices and memory, in its own protocol.

The wire format, from ggml/src/ggml-rpc/ggml-rpc.cpp of the pinned llama.cpp
(protocol 7.0.0), little-endian:

    request: | command (1 byte) | size (uint64) | payload (size bytes) |
    reply:   | size (uint64) | payload (size bytes) |

HELLO (14) comes first: 24 bytes of transport capabilities (zeros: plain TCP),
answered with major, minor, patch, a padding byte and the worker's 24
capability bytes. DEVICE_COUNT (15) has no payload and is answered with a
uint32; GET_DEVICE_MEMORY (11) takes a uint32 device and is answered with its
free and total bytes (uint64 each). The protocol names no device: a worker's
log says "CPU" or "CUDA0", the wire does not.

Two facts of the worker shape this module:

- It serves one client at a time. While a llama-server holds it, the next
  connection waits in its listen queue: connect succeeds, HELLO goes
  unanswered. That is BUSY, after ``timeout_s``.
- It writes replies with send() without MSG_NOSIGNAL and does not ignore
  SIGPIPE, so a reply written to a prober that has hung up kills it. A probe
  therefore never closes while a reply is owed: one that stops waiting hands
  its socket to a background thread, which reads the late reply (when the
  worker is free again) and only then closes. One such waiting probe per
  worker at most: a later probe of that worker says BUSY without connecting.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from llamagate.domain.rpc_workers import WorkerDevice, WorkerReport, WorkerState, parse_address

PROTOCOL_MAJOR = 7  # RPC_PROTO_MAJOR_VERSION of the pinned ggml-rpc.h: llama-server refuses any other
PROTOCOL_MINOR = 0  # ... and a worker whose minor is newer than its own
HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY = 14, 15, 11
_CAPS = 24  # RPC_CONN_CAPS_SIZE
_HELLO_REPLY = 4 + _CAPS
# Bounds on what a peer's numbers may make us do: a device count is looped
# over, a reply size is read (or, for a foreign size, drained before closing).
MAX_DEVICES = 64
MAX_REPLY = 1 << 16
# A probe left waiting for a busy worker waits this long for its late reply
# at most: a worker held that long has a client that is not ours to outwait.
LINGER_S = 24 * 3600.0


class _Timeout(Exception):
    """No reply in time; ``owed`` tells whether the worker still owes one."""


class _Closed(Exception):
    """The worker hung up."""


class _Bad(Exception):
    """A reply unlike a ggml RPC worker's (already drained when it can be)."""


class _Conversation:
    """One connection's requests and replies, all within one deadline.

    ``owed`` is the number of reply bytes the worker will still write (None
    while the size header is awaited, ``head`` holding what came of it):
    closing is safe only when it is 0.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.owed: int | None = 0
        self.head = b""
        self.replies = 0  # read whole

    @property
    def silent(self) -> bool:
        """Not a byte of any reply came: the worker never took up the conversation."""
        return self.replies == 0 and self.owed is None and not self.head

    def ask(self, command: int, payload: bytes, reply_size: int) -> bytes:
        self._send(struct.pack("<BQ", command, len(payload)) + payload)
        self.owed, self.head = None, b""
        size = self._size()
        if size > MAX_REPLY:
            self.owed = MAX_REPLY  # drained as far as we read for anyone; a peer owing more is no worker of ours
            raise _Bad(f"answered command {command} with a {size}-byte reply; expected {reply_size} bytes")
        self.owed = size
        body = self._read(size)
        self.replies += 1
        if size != reply_size:
            raise _Bad(f"answered command {command} with {size} bytes; expected {reply_size}")
        return body

    def _send(self, data: bytes) -> None:
        self.sock.settimeout(self._left())
        try:
            self.sock.sendall(data)
        except TimeoutError:  # a request is a few bytes: a full send buffer means a stuck peer
            raise _Timeout("could not send a request in time") from None

    def _read(self, n: int) -> bytes:
        chunks: list[bytes] = []
        got = 0
        while got < n:
            self.sock.settimeout(self._left())
            try:
                chunk = self.sock.recv(min(n - got, MAX_REPLY))
            except TimeoutError:
                raise _Timeout(f"got {got} of {n} bytes") from None
            if not chunk:
                raise _Closed(f"hung up after {got} of {n} bytes")
            chunks.append(chunk)
            got += len(chunk)
            if self.owed:
                self.owed -= len(chunk)
        return b"".join(chunks)

    def _size(self) -> int:
        """The reply's size header; what came of it stays in ``head`` if time runs out."""
        while len(self.head) < 8:
            self.head += self._read(1)
        return int(struct.unpack("<Q", self.head)[0])

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Timeout("out of time")
        return left

    def settle(self) -> None:
        """Read whatever the worker still owes (no deadline but LINGER_S), then close."""
        try:
            self.deadline = time.monotonic() + LINGER_S
            if self.owed is None:
                self.owed = min(self._size(), MAX_REPLY)  # a foreign peer's huge size: read what we may, then go
            if self.owed:
                self._read(self.owed)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))  # all read: hang up
        except (OSError, _Timeout, _Closed):
            pass
        finally:
            self.sock.close()


class RpcProbe:
    """Implements the WorkerProbe port over TCP."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, threading.Thread] = {}  # a busy worker's unanswered probe, by address

    def probe(self, address: str, timeout_s: float) -> WorkerReport:
        address = parse_address(address)
        with self._lock:
            if address in self._waiting:
                return WorkerReport(address, WorkerState.BUSY, detail="an earlier probe still waits in its queue: "
                                    "it serves another client (one at a time)")
        host, port = address.rsplit(":", 1)
        deadline = time.monotonic() + timeout_s
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except TimeoutError:
            return WorkerReport(address, WorkerState.UNREACHABLE, detail=f"no connection within {timeout_s:g} s")
        except OSError as error:
            return WorkerReport(address, WorkerState.UNREACHABLE, detail=error.strerror or str(error))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conversation = _Conversation(sock, deadline)
        try:
            report = _converse(conversation, address)
        except _Timeout as error:
            if conversation.silent:
                self._wait_beside(address, conversation)
                return WorkerReport(address, WorkerState.BUSY, detail=f"no answer to HELLO within {timeout_s:g} s: "
                                    "it serves another client (one at a time)")
            self._close_or_wait(address, conversation)
            return WorkerReport(address, WorkerState.UNREACHABLE, detail=f"stopped answering ({error})")
        except _Closed as error:
            sock.close()
            return WorkerReport(address, WorkerState.UNREACHABLE, detail=f"hung up without answering ({error})")
        except _Bad as error:
            self._close_or_wait(address, conversation)
            return WorkerReport(address, WorkerState.INCOMPATIBLE, detail=str(error))
        except OSError as error:  # reset, unreachable network: nothing more will come
            sock.close()
            return WorkerReport(address, WorkerState.UNREACHABLE, detail=error.strerror or str(error))
        sock.close()  # every reply read: the worker waits for a command, and takes the hang-up as the end
        return report

    def _close_or_wait(self, address: str, conversation: _Conversation) -> None:
        if conversation.owed == 0:
            conversation.sock.close()
        else:
            self._wait_beside(address, conversation)

    def _wait_beside(self, address: str, conversation: _Conversation) -> None:
        """The worker owes a reply: read it in the background before closing (see the module's doc).

        Should this process end first, the kernel closes the socket: with
        SO_LINGER 0 that is a reset, which a worker that has not taken the
        connection yet survives (a plain hang-up, measured, kills it once it
        answers)."""
        conversation.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        def settle() -> None:
            try:
                conversation.settle()
            finally:
                with self._lock:
                    self._waiting.pop(address, None)

        thread = threading.Thread(target=settle, name=f"rpc probe of {address}", daemon=True)
        with self._lock:
            self._waiting[address] = thread
        thread.start()

    def waiting(self, address: str) -> bool:
        """An unanswered probe of this worker is still queued (tests: it must end once the worker is free)."""
        with self._lock:
            return parse_address(address) in self._waiting


def _converse(conversation: _Conversation, address: str) -> WorkerReport:
    hello = conversation.ask(HELLO, bytes(_CAPS), _HELLO_REPLY)
    major, minor, patch = hello[0], hello[1], hello[2]
    protocol = f"{major}.{minor}.{patch}"
    if major != PROTOCOL_MAJOR or minor > PROTOCOL_MINOR:
        return WorkerReport(address, WorkerState.INCOMPATIBLE, protocol=protocol,
                            detail=f"speaks RPC protocol {protocol}; our llama-server speaks "
                                   f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}.x: run the ggml-rpc-server of the same build")
    (count,) = struct.unpack("<I", conversation.ask(DEVICE_COUNT, b"", 4))
    if count > MAX_DEVICES:
        return WorkerReport(address, WorkerState.INCOMPATIBLE, protocol=protocol,
                            detail=f"reports {count} devices; more than {MAX_DEVICES} is no real worker")
    devices = []
    for index in range(count):
        free, total = struct.unpack("<QQ", conversation.ask(GET_DEVICE_MEMORY, struct.pack("<I", index), 16))
        if free > total:
            return WorkerReport(address, WorkerState.INCOMPATIBLE, protocol=protocol,
                                detail=f"device {index} reports {free} bytes free of {total}")
        devices.append(WorkerDevice(index, free, total))
    return WorkerReport(address, WorkerState.READY, tuple(devices), protocol)
