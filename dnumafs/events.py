"""Uevents: the model's announcements of the devices a change touched, as Linux sends them
(lib/kobject_uevent.c), and their delivery to other processes. Knows nothing of the model.

A change names its devices as (action, devpath, properties) (dnumafs.mm.changes.Device). Here
each becomes a Uevent: `ACTION@DEVPATH`, then ACTION, DEVPATH, SUBSYSTEM, the properties and
SEQNUM, numbered 1, 2, ... per mount. The daemon publishes them once the files show the
change (the page cache has dropped the kernel's pages of what it touched) on a unix socket in
its runtime directory (mode 0700: the mount's user only). Each connection gets the events
published after it was accepted, through a bounded queue of its own: a reader that falls
behind loses events, and is told how many (a Gap), rather than stalling the daemon.

On the socket each record is a 4-byte big-endian length and a payload: the uevent in the
kernel's netlink format (NUL-separated), `!ready` once the connection is subscribed, or
`!gap N` for N events dropped there.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from dnumafs.mm.changes import Device

log = logging.getLogger(__name__)

# The subsystem of a device, by where it sits under /devices (the bus its kobject is on).
SUBSYSTEMS = (
    ("/devices/system/node/", "node"),
    ("/devices/system/cpu/", "cpu"),
    ("/devices/system/memory/", "memory"),
)
# kobject_actions[] (lib/kobject_uevent.c)
ACTIONS = frozenset({"add", "remove", "change", "move", "online", "offline", "bind", "unbind"})
# Each key the kernel sets itself; a property may not repeat one.
RESERVED = frozenset({"ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM"})

QUEUE_MAX = 4096            # events a connection may have unread before it loses some
UEVENT_BUFFER_SIZE = 2048   # the kernel's limit on one event's text
_LEN = struct.Struct(">I")
READY = b"!ready"
GAP = b"!gap "


class EventsError(Exception):
    """Why the events of a mount cannot be had, for the user."""


def subsystem_of(devpath: str) -> str:
    for prefix, subsystem in SUBSYSTEMS:
        if devpath.startswith(prefix):
            return subsystem
    raise ValueError(f"no subsystem for device {devpath}")


def _properties(value: Iterable[tuple[str, str]] | Mapping[str, str]
                ) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(k), str(v)) for k, v in items)


def _check_properties(_: object, __: object, value: tuple[tuple[str, str], ...]) -> None:
    for key, val in value:
        if key in RESERVED or not key or "=" in key or "\0" in key + val:
            raise ValueError(f"bad uevent property {key!r}={val!r}")


@attrs.frozen
class Uevent:
    """One kernel uevent."""

    action: str = attrs.field(validator=attrs.validators.in_(ACTIONS))
    devpath: str = attrs.field(validator=attrs.validators.matches_re(r"/[^\0]*"))
    subsystem: str
    seqnum: int = attrs.field(validator=attrs.validators.ge(1))
    properties: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_properties, validator=_check_properties)

    def env(self, seqnum: bool = True) -> list[tuple[str, str]]:
        """Its variables in the kernel's order: ACTION, DEVPATH, SUBSYSTEM, the device's
        own, SEQNUM last."""
        env = [("ACTION", self.action), ("DEVPATH", self.devpath),
               ("SUBSYSTEM", self.subsystem), *self.properties]
        return [*env, ("SEQNUM", str(self.seqnum))] if seqnum else env

    def netlink(self, seqnum: bool = True) -> bytes:
        """The message a NETLINK_KOBJECT_UEVENT listener reads: `ACTION@DEVPATH` and each
        variable, NUL-terminated (without SEQNUM for the kernel to add its own)."""
        head = f"{self.action}@{self.devpath}"
        return "".join(f"{s}\0" for s in [head, *(f"{k}={v}" for k, v in self.env(seqnum))]
                       ).encode()

    @classmethod
    def parse(cls, data: bytes) -> Uevent:
        """The uevent of a netlink message (raises ValueError if it is not one)."""
        head, *fields = data.rstrip(b"\0").decode().split("\0")
        env = dict(f.split("=", 1) for f in fields)
        action, devpath = head.split("@", 1)
        if (env.pop("ACTION", None), env.pop("DEVPATH", None)) != (action, devpath):
            raise ValueError(f"uevent {head!r}: its ACTION and DEVPATH do not match")
        return cls(action, devpath, env.pop("SUBSYSTEM"), int(env.pop("SEQNUM")), env)

    def monitor_text(self, stamp: float) -> str:
        """As `udevadm monitor --kernel --property` prints it, received at stamp
        (CLOCK_MONOTONIC seconds)."""
        head = f"KERNEL[{stamp:.6f}] {self.action:<8} {self.devpath} ({self.subsystem})\n"
        return head + "".join(f"{k}={v}\n" for k, v in self.env()) + "\n"


@attrs.frozen
class Gap:
    """Events a reader lost because it fell behind."""

    dropped: int = attrs.field(validator=attrs.validators.ge(1))


@attrs.define(eq=False)
class Sequencer:
    """Numbers a mount's events, from 1."""

    seqnum: int = 0

    def events(self, devices: Iterable[Device]) -> list[Uevent]:
        out = []
        for action, devpath, props in devices:
            self.seqnum += 1
            out.append(Uevent(action, devpath, subsystem_of(devpath), self.seqnum, props))
        return out


# --- the daemon's side -------------------------------------------------------------------------

def _record(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


@attrs.define(eq=False)
class _Connection:
    sock: socket.socket
    queue: queue.Queue[bytes | None] = attrs.field(factory=lambda: queue.Queue(QUEUE_MAX))
    dropped: int = 0            # lost since the last gap was told
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def offer(self, payload: bytes) -> None:
        """Queue payload, or count it lost; never blocks. A gap goes before what follows it."""
        with self._lock:
            try:
                if self.dropped:
                    if self.queue.qsize() >= QUEUE_MAX - 1:
                        raise queue.Full
                    self.queue.put_nowait(self._gap())
                self.queue.put_nowait(_record(payload))
            except queue.Full:
                self.dropped += 1

    def _gap(self) -> bytes:
        gap = _record(GAP + str(self.dropped).encode())
        self.dropped = 0
        return gap

    def send_all(self) -> None:
        """The connection's thread: write what is queued, and a gap once the queue is
        drained, until told to stop or the reader goes away."""
        with contextlib.suppress(OSError):
            while (data := self.queue.get()) is not None:
                self.sock.sendall(data)
                with self._lock:
                    gap = self._gap() if self.dropped and self.queue.empty() else None
                if gap is not None:
                    self.sock.sendall(gap)
        self.sock.close()


@attrs.define(eq=False)
class Broadcaster:
    """The daemon's event socket: publish() numbers devices and offers them to every
    connection."""

    path: Path
    sequencer: Sequencer = attrs.field(factory=Sequencer)
    _server: socket.socket | None = None
    _conns: list[_Connection] = attrs.field(factory=list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()          # a dead daemon's
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        server.bind(str(self.path))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, name="dnumafs-events", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._lock:
            for c in self._conns:
                c.queue.put(None)
            self._conns.clear()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return                  # stopped
            conn = _Connection(sock)
            conn.queue.put_nowait(_record(READY))
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), name="dnumafs-events-conn",
                             daemon=True).start()

    def _serve(self, conn: _Connection) -> None:
        conn.send_all()
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)

    def publish(self, devices: Iterable[Device]) -> None:
        """Number the devices' events and offer them to every connection (never blocks)."""
        with self._lock:
            events = self.sequencer.events(devices)
            for ev in events:
                data = ev.netlink()
                for c in self._conns:
                    c.offer(data)


# --- a reader's side ---------------------------------------------------------------------------

@attrs.define(eq=False)
class Watch:
    """The events of a mount published since it was made: iterate for Uevents (and Gaps);
    close() (or leave its `with`) to stop."""

    sock: socket.socket
    _buf: bytes = b""

    @classmethod
    def connect(cls, path: Path, timeout: float = 10.0) -> Watch:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(path))
        except OSError as e:
            sock.close()
            raise EventsError(f"cannot connect to the daemon's events at {path}: "
                              f"{e.strerror}") from None
        w = cls(sock)
        if w._payload(timeout) != READY:        # only then is it subscribed
            w.close()
            raise EventsError(f"{path}: the daemon did not answer")
        return w

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop; a thread iterating meanwhile sees the end."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _payload(self, timeout: float | None) -> bytes | None:
        """The next record's payload; None at the end (the daemon is gone); raises
        TimeoutError if none came within timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self._buf) >= _LEN.size:
                (n,) = _LEN.unpack_from(self._buf)
                if len(self._buf) >= _LEN.size + n:
                    data = self._buf[_LEN.size:_LEN.size + n]
                    self._buf = self._buf[_LEN.size + n:]
                    return data
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("no event")
            try:
                self.sock.settimeout(left)
                chunk = self.sock.recv(65536)       # TimeoutError after left seconds
            except OSError as e:
                if e.errno != errno.EBADF:
                    raise
                return None                         # closed by close()
            if not chunk:
                return None
            self._buf += chunk

    def next(self, timeout: float | None = None) -> Uevent | Gap | None:
        """The next event (None: the mount is gone); TimeoutError after timeout seconds."""
        data = self._payload(timeout)
        if data is None:
            return None
        if data.startswith(GAP):
            return Gap(int(data[len(GAP):]))
        return Uevent.parse(data)

    def __iter__(self) -> Iterator[Uevent | Gap]:
        while (ev := self.next()) is not None:
            yield ev


def watch(mnt: str | os.PathLike[str], timeout: float = 10.0) -> Watch:
    """Subscribe to the events of the dnumafs mount at mnt (its daemon must be this user's);
    every event published after this returns is seen, in order."""
    from dnumafs import daemon
    return Watch.connect(daemon.events_path(daemon.mountpoint_path(mnt)), timeout)


# --- real kernel uevents -----------------------------------------------------------------------

NETLINK_KOBJECT_UEVENT = 15
UEVENT_GROUP = 1
_NLMSG = struct.Struct("=IHHII")    # struct nlmsghdr
_NLM_F_REQUEST = 1
_NLMSG_TYPE = 0x10                  # the first type netlink_rcv_skb() hands to the protocol


def netlink_socket() -> socket.socket:
    """A socket that sends uevents into this process's network namespace (Linux 4.17+;
    needs CAP_SYS_ADMIN in the user namespace that owns it)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                      NETLINK_KOBJECT_UEVENT)
    s.bind((0, 0))
    return s


def inject(sock: socket.socket, ev: Uevent) -> None:
    """Send ev into the namespace as the kernel would: the kernel adds its SEQNUM (its own
    count, so listeners there see the kernel's numbers) and sends it to group 1 listeners."""
    body = ev.netlink(seqnum=False)
    sock.sendto(_NLMSG.pack(_NLMSG.size + len(body), _NLMSG_TYPE, _NLM_F_REQUEST, 0, 0) + body,
                (0, 0))


def forward(w: Watch, sock: socket.socket) -> None:
    """Inject every event w yields until the mount goes away."""
    for ev in w:
        if isinstance(ev, Uevent):
            inject(sock, ev)
        else:
            log.warning("events: %d lost", ev.dropped)
