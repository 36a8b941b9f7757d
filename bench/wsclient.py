"""A crowd of chat sockets driven from one thread, cheap enough not to be measured.

Hundreds of websocket-client threads would spend a core on their own and add
their delay to the server's; one epoll loop over raw sockets reads a frame in a few
microseconds. It speaks just the part of RFC 6455 the chat protocol needs.
"""

import base64
import contextlib
import json
import os
import re
import select
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.common import BenchError

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
TEXT_FRAME = b'{"type": "text", "text": "'
# Deltas a few milliseconds apart share a frame: each keeps its stamp.
STAMP = re.compile(rb"@(\d+)@")
KIND = re.compile(rb'^\{"type": "([a-z_]+)"')


@dataclass
class Chat:
    """One socket and what it saw of its replies."""

    sock: socket.socket
    buffer: bytes = b""
    ready: bool = False
    sent_at: int = 0
    ended_at: int = 0
    delays: list = field(default_factory=list)
    stamps: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    closed: bool = False

    @property
    def done(self):
        return self.ended_at > 0 or self.closed or bool(self.errors)


def _handshake(url, token):
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise BenchError("chat socket closed during the handshake")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise BenchError(f"no websocket upgrade: {head[:200]!r}")
    sock.setblocking(False)
    return Chat(sock=sock, buffer=rest)


def encode(opcode, payload):
    """A masked client frame, as RFC 6455 requires of clients."""
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    keystream = (mask * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")
    return header + mask + masked.to_bytes(size, "big")


def decode(buffer):
    """Whole server frames at the start of ``buffer``, and what is left over."""
    frames = []
    while len(buffer) >= 2:
        opcode, size, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < start + size:
            break
        frames.append((opcode, buffer[start : start + size]))
        buffer = buffer[start + size :]
    return frames, buffer


class Crowd:
    """``len(tokens)`` open chat sockets; each token is a user's access token."""

    def __init__(self, ws_url, tokens):
        self.chats = [_handshake(ws_url, token) for token in tokens]
        self.by_fd = {chat.sock.fileno(): chat for chat in self.chats}
        self.poll = select.epoll()
        for fd in self.by_fd:
            self.poll.register(fd, select.EPOLLIN)
        self._loop(lambda: all(c.ready or c.done for c in self.chats), 60)
        refused = [c.errors for c in self.chats if not c.ready]
        if refused:
            raise BenchError(f"{len(refused)} chats refused: {refused[0]}")

    def chat(self, text, spread=0.0, timeout=120.0):
        """Send ``text`` on every socket, spread evenly over ``spread`` seconds."""
        frame = encode(TEXT, json.dumps({"type": "chat", "text": text}).encode())
        start = time.monotonic_ns()
        step = int(spread * 1e9 / max(1, len(self.chats)))
        due = [(start + i * step, chat) for i, chat in enumerate(self.chats)]
        for chat in self.chats:
            chat.ended_at = 0
        while due:
            now = time.monotonic_ns()
            while due and due[0][0] <= now:
                _, chat = due.pop(0)
                chat.sent_at = now
                chat.sock.sendall(frame)  # a few dozen bytes: never blocks
            wait = (due[0][0] - now) / 1e9 if due else 0
            self._read(max(wait, 0))
        self._loop(lambda: all(c.done for c in self.chats), timeout)

    def _loop(self, finished, timeout):
        deadline = time.monotonic() + timeout
        while not finished():
            if time.monotonic() > deadline:
                raise BenchError(f"chat crowd: no answer within {timeout}s")
            self._read(0.5)

    def _read(self, timeout):
        for fd, _ in self.poll.poll(timeout):
            chat = self.by_fd[fd]
            try:
                data = chat.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            now = time.monotonic_ns()
            if not data:
                self._closed(chat)
                continue
            frames, chat.buffer = decode(chat.buffer + data)
            for opcode, payload in frames:
                self._frame(chat, opcode, payload, now)

    def _closed(self, chat):
        chat.closed = True
        self.poll.unregister(chat.sock.fileno())

    def _frame(self, chat, opcode, payload, now):
        if opcode == PING:
            chat.sock.sendall(encode(PONG, payload))
        elif opcode == CLOSE:
            self._closed(chat)
        elif opcode == TEXT:
            self._message(chat, payload, now)

    def _message(self, chat, payload, now):
        if payload.startswith(TEXT_FRAME):
            for stamp in STAMP.findall(payload):
                sent = int(stamp)
                chat.delays.append(now - sent)
                chat.stamps.append(sent)
            return
        kind = KIND.match(payload)
        kind = kind.group(1) if kind else b"?"
        if kind == b"ready":
            chat.ready = True
        elif kind == b"end":
            chat.ended_at = now
        elif kind == b"error":
            chat.errors.append(payload.decode(errors="replace")[:300])

    def close(self):
        for chat in self.chats:
            # The server may have closed first; the socket goes either way.
            with contextlib.suppress(OSError):
                chat.sock.sendall(encode(CLOSE, (1000).to_bytes(2, "big")))
            chat.sock.close()
        self.poll.close()
