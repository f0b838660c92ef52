"""Reads from the kernel's page cache: what the daemon keeps of the texts the kernel caches, and
the invalidation of the ones a change of the model touched.

The kernel (with FUSE_NO_OPEN_SUPPORT, Linux 4.19+, once open answers ENOSYS) sends no open or
release and keeps each file's pages and attributes; it asks the daemon only for what it does
not hold. So the daemon keeps, for every path the kernel has asked about, the text it gave (and
its length, the file's st_size). After each change of the model it makes those texts again,
compares, and tells the kernel to drop exactly the ones that differ (their pages and
attributes) and the entries that are gone, through the kernel's FUSE notices, before the
writer whose write made the change gets its answer. A new text is made first and the kernel
told second, so a read that reaches the daemon after the notice gets the new text.

The notices go out from a thread of their own: the kernel holds a page locked while the daemon
fills it, so a notice sent from a thread that serves requests could wait for itself. For the
same reason a notice drops only the pages the kernel holds up to date, the ones the daemon
served (or a write filled whole), and the attributes: a write to a page the kernel did not
hold keeps that page locked, and not up to date, until the write is answered, and the
writer waits for its notices.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from dnumafs.mm.changes import LAYOUTS, MODEL_TOPICS, NODES, PLACES

from .tree import PAGE_SIZE, STATIC, Attr, Depends, Dir, Node, Symlink, listing, resolve

if TYPE_CHECKING:
    from dnumafs.mm.changes import Device

    from .session import Session

log = logging.getLogger(__name__)

# How long a writer waits for its change's notices: a bound, so that a wedged kernel or
# daemon cannot hang the writer for ever (the notices are then late, never lost).
SYNC_TIMEOUT = 10.0


def kernel_has_no_open(release: str | None = None) -> bool:
    """Whether this kernel keeps page cache with no open (FUSE_NO_OPEN_SUPPORT, Linux 4.19)."""
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return m is not None and (int(m[1]), int(m[2])) >= (4, 19)


# The kernel's notices (include/uapi/linux/fuse.h): fuse_out_header {len, error = the notice's
# code, unique = 0}, then its fuse_notify_*_out.
FUSE_NOTIFY_INVAL_INODE = 2
FUSE_NOTIFY_INVAL_ENTRY = 3
OUT_HEADER = struct.Struct("<IiQ")
INVAL_INODE_OUT = struct.Struct("<Qqq")
INVAL_ENTRY_OUT = struct.Struct("<QII")


class Notifier:
    """The kernel's invalidation notices, written to the mount's /dev/fuse channel, on a
    duplicate of the session's descriptor: a change made outside a request (the workload's
    clock) may still be told after the session closed its own; the write then fails with
    ENODEV instead of going to whatever took the descriptor's number."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def capture(self, fd: int) -> None:
        self._fd = os.dup(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def ready(self) -> bool:
        return self._fd is not None

    def _send(self, code: int, body: bytes) -> int:
        """0, or the negative errno of the write (-ENOENT: the kernel forgot the inode)."""
        assert self._fd is not None
        try:
            os.write(self._fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), code, 0) + body)
        except OSError as e:
            return -(e.errno or errno.EIO)
        return 0

    def inval_inode(self, ino: int, pages: range | None) -> int:
        """Drop the inode's attributes and its cached pages in the range (none if empty, all
        if None: a directory's cached listing): 0, or -ENOENT if the kernel has forgotten
        the inode."""
        off, length = ((0, 0) if pages is None else
                       (pages.start * PAGE_SIZE, len(pages) * PAGE_SIZE) if pages else (-1, 0))
        return self._send(FUSE_NOTIFY_INVAL_INODE, INVAL_INODE_OUT.pack(ino, off, length))

    def inval_entry(self, parent: int, name: bytes) -> int:
        return self._send(FUSE_NOTIFY_INVAL_ENTRY,
                          INVAL_ENTRY_OUT.pack(parent, len(name), 0) + name + b"\0")


# A text that changes with the clock (counted in USER_HZ ticks) is made again when the one
# kept is older than a tick: a stat that looked the file up for its invalidation may have
# made one long before its reader asks.
VOLATILE_NS = 10_000_000

# Directories and their entries come and go with nodes, layouts and memory blocks (whose
# changes announce anything) and with where pages lie (memoryN/nodeM): never with an
# allocation or a free alone, so thousands of known directories are not looked up again then.
DIR_DEPENDS = frozenset({NODES, LAYOUTS, PLACES})

@attrs.define
class Known:
    """A path the kernel has asked about, and what the daemon gave it: a file's text (None
    for a file without show), a symlink's target, nothing for a directory."""

    kind: type[Attr] | type[Symlink] | type[Dir]
    text: bytes | None
    depends: Depends
    volatile: bool
    changed_ns: int
    epoch: int = 0          # the count of changes when it was made


def render(node: Node) -> bytes | None:
    """What the kernel may cache of node now."""
    if isinstance(node, Attr):
        if node.show is None:       # no text, or a binary file never made whole
            return None
        try:
            return node.read()
        except OSError:
            return None
    if isinstance(node, Symlink):
        return node.target().encode()
    if isinstance(node, Dir):
        return listing(node)
    return None


def _text(node: Node) -> bytes | None:
    """What known() keeps of node: a directory's listing only once the kernel lists it
    (listed()), so that a stat of a directory costs no listing."""
    return None if isinstance(node, Dir) else render(node)


def _kind(node: Node) -> type[Attr] | type[Symlink] | type[Dir]:
    return Dir if isinstance(node, Dir) else type(node)


@attrs.define(eq=False)
class Refresh:
    """One batch of work for the notifying thread: the topics changed (None: anything), the
    paths written (always dropped: the kernel put the written bytes in their pages), the
    event a waiting writer waits on, and the devices the change touched (told to `shown`
    once the kernel's pages are dropped)."""

    topics: Depends
    written: tuple[str, ...] = ()
    done: threading.Event | None = None
    devices: tuple[Device, ...] = ()


@attrs.define(eq=False)
class PageCache:
    """The texts the kernel may hold, and the thread that keeps them in step with the model."""

    root: Dir
    notifier: Notifier = attrs.field(factory=Notifier)
    # The node id the kernel knows a path by, if it knows it (the session's table).
    nodeid: Callable[[str], int | None] = lambda path: None
    # Forgets a path gone, so that a name that comes back is a new node (the session's).
    unlink: Callable[[str], None] = lambda path: None
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _known: dict[str, Known] = attrs.field(factory=dict)
    # The pages of each file the kernel may hold up to date: served, or written whole.
    _pages: dict[str, range] = attrs.field(factory=dict)
    # The known paths by the topics their texts depend on (None: every model topic).
    _index: dict[str | None, set[str]] = attrs.field(factory=dict)
    # The directories whose listing the kernel may hold.
    _listed: set[str] = attrs.field(factory=set)
    # Texts that change with the clock, read, and when to drop them (monotonic ns).
    _later: dict[str, int] = attrs.field(factory=dict)
    _epoch: int = 0             # counts changes, so that a text made across one is made again
    _queue: queue.SimpleQueue[Refresh | None] = attrs.field(factory=queue.SimpleQueue)
    _thread: threading.Thread | None = None
    # Told, in the notifying thread, the devices of changes whose files now show them.
    shown: Callable[[list[Device]], None] | None = None

    def attach(self, session: Session) -> None:
        """Tell the kernel of changes through session's mount (from its INIT)."""
        self.nodeid = session.nodes.find
        self.unlink = session.nodes.unlink
        self.notifier.capture(session.fd)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dnumafs-inval", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=SYNC_TIMEOUT)
            if not self._thread.is_alive():
                self.notifier.close()

    # --- what requests ask --------------------------------------------------------------

    def known(self, path: str, node: Node, sized: bool = False) -> Known:
        """The text the kernel gets for path: the one it was given, unless the file's text
        changes with the clock and is more than a tick old or older than a change of the
        model (a stale `check` would pass for sound). A text made while the model changed is
        made again: the change's remaking may have looked at the known texts before this
        one was among them. sized (a read): the kept one whatever its age, as the kernel
        cuts the read at the size it was given with it."""
        with self._lock:
            k = self._known.get(path)
        if k is not None and k.kind is _kind(node) and (sized or not (k.volatile and (
                time.time_ns() - k.changed_ns > VOLATILE_NS or k.epoch != self._epoch))):
            return k
        depends = node.depends if isinstance(node, Attr) else (
            DIR_DEPENDS if isinstance(node, Dir) else None)
        volatile = isinstance(node, (Attr, Dir)) and node.volatile
        while True:
            epoch = self._epoch
            text = _text(node)          # outside the lock: it takes the model's
            with self._lock:
                if epoch == self._epoch:
                    k = Known(_kind(node), text, depends, volatile, time.time_ns(), epoch)
                    if volatile:
                        self._forget(path)
                        self._known[path] = k
                        return k
                    kept = self._known.setdefault(path, k)
                    if kept is k:
                        self._index_add(path, k)
                    return kept

    # --- the index of known texts by topic (under the lock) -----------------------------

    @staticmethod
    def _index_keys(k: Known) -> Iterable[str | None]:
        """The topics a text is indexed by (None: every model topic), so that a change looks
        at the texts it may touch and not at every text the kernel holds; one that never
        changes (STATIC) or is made at every read (volatile) is not indexed."""
        if k.volatile or k.depends == STATIC:
            return ()
        return (None,) if k.depends is None else k.depends

    def _index_add(self, path: str, k: Known) -> None:
        for topic in self._index_keys(k):
            self._index.setdefault(topic, set()).add(path)

    def _forget(self, path: str) -> None:
        k = self._known.pop(path, None)
        for topic in self._index_keys(k) if k is not None else ():
            self._index.get(topic, set()).discard(path)

    def _touched(self, topics: Depends) -> set[str]:
        """The known paths topics may have changed (None: anything)."""
        if topics is None:
            return set().union(*self._index.values())
        paths: set[str] = set().union(*(self._index.get(t, ()) for t in topics))
        if topics & MODEL_TOPICS:
            paths |= self._index.get(None, set())
        return paths

    def listed(self, path: str, node: Dir, offset: int) -> bytes:
        """The listing readdir serves from offset, which the kernel then caches: the one it
        was given, remade at every change of the directories (DIR_DEPENDS) once listed, and
        made afresh at the listing's start if it was not. A directory whose entries change
        with the clock (a live host's) is dropped once listed to its end."""
        while True:
            k = self.known(path, node, sized=offset > 0)
            with self._lock:
                if k.text is not None and (offset > 0 or path in self._listed):
                    text = k.text
                    break
                self._listed.add(path)      # from now on, changes remake it
                epoch = self._epoch
            text = listing(node)
            with self._lock:
                if epoch == self._epoch:
                    k.text = text
                    break
        if node.volatile and offset >= len(text):
            self._queue.put(Refresh(topics=frozenset(), written=(path,)))
        return text

    def filled(self, path: str, offset: int, length: int) -> None:
        """The kernel now holds bytes [offset, offset + length) of path up to date (a read
        served, a write of whole pages). A file whose text changes with the clock is then
        dropped a tick later, so that a later read asks again (an empty one too: the kernel
        now takes its size for 0 and would not ask), but not the same reader's next read(2):
        dropped at once, its size would be asked again, and a reader reading on to its end
        would get the tail of a newer, longer text after this one."""
        with self._lock:
            if length > 0:
                first, last = offset // PAGE_SIZE, (offset + length - 1) // PAGE_SIZE + 1
                held = self._pages.get(path)
                self._pages[path] = (range(min(first, held.start), max(last, held.stop))
                                     if held else range(first, last))
            k = self._known.get(path)
            if k is None or not k.volatile:
                return
            self._drop_later(path)

    def _drop_later(self, path: str) -> None:
        """Have the notifying thread drop path a tick from now (lock held)."""
        if path in self._later:
            return
        if not self._later:             # wake it: it may be waiting for nothing
            self._queue.put(Refresh(topics=frozenset()))
        self._later[path] = time.monotonic_ns() + VOLATILE_NS

    def expire(self, path: str) -> None:
        """The kernel was just given size 0 for a file made again at each read: have it
        forget that size soon, or the empty text (which the kernel reads without asking)
        would stay empty for good. Only then: a notice that reaches the kernel before it
        took a getattr's answer has it ignore that answer and keep the size it had, which
        would cut the next read short; a text read is dropped after its read (filled)."""
        self._queue.put(Refresh(topics=frozenset(), written=(path,)))

    # --- changes ------------------------------------------------------------------------

    def changed(self, topics: Depends, devices: tuple[Device, ...] = ()) -> None:
        """The model changed (a listener of its hook, called with the model's lock held):
        queue the work; the writer, if any, waits for it with sync()."""
        with self._lock:
            self._epoch += 1
        self._queue.put(Refresh(topics, devices=devices))

    def sync(self, written: Iterable[str], topics: Depends) -> None:
        """Remake and drop whatever topics touched, and the written paths, before returning."""
        done = threading.Event()
        with self._lock:
            self._epoch += 1
        self._queue.put(Refresh(topics, tuple(written), done))
        if not done.wait(SYNC_TIMEOUT):
            log.warning("page cache: notices still pending after %.0f s", SYNC_TIMEOUT)

    def _later_due(self) -> tuple[list[str], float | None]:
        """The delayed drops due now, and the seconds until the next one (None: none)."""
        now = time.monotonic_ns()
        with self._lock:
            due = [p for p, t in self._later.items() if t <= now]
            for p in due:
                del self._later[p]
            wait = min(self._later.values(), default=None)
        return due, None if wait is None else max(0.0, (wait - now) / 1e9)

    def _run(self) -> None:
        while True:
            due, wait = self._later_due()
            try:
                batch = [self._queue.get(timeout=0 if due else wait)]
            except queue.Empty:
                batch = []
            while not self._queue.empty():      # coalesce what came meanwhile
                batch.append(self._queue.get())
            work = [r for r in batch if r is not None]
            due += self._later_due()[0]
            if due:
                work.append(Refresh(topics=frozenset(), written=tuple(due)))
            try:
                if work:
                    self._apply(work)
            except Exception:
                log.error("page cache: invalidation failed", exc_info=True)
            finally:
                devices = [d for r in work for d in r.devices]
                if devices and self.shown is not None:
                    self.shown(devices)     # before the writers return: their events are out
                for r in work:
                    if r.done is not None:
                        r.done.set()
            if None in batch:
                return

    def _apply(self, work: list[Refresh]) -> None:
        topics: Depends = frozenset()
        written: set[str] = set()
        for r in work:
            topics = None if topics is None or r.topics is None else topics | r.topics
            written.update(r.written)
        changed, gone = self.remake(topics, written)
        self._notify(sorted(set(changed) | written), gone, set(changed))

    def remake(self, topics: Depends, written: set[str]) -> tuple[list[str], list[str]]:
        """Make again every known text that topics may touch (empty: none) and the written
        ones; the paths whose text changed and the highest paths gone (their descendants
        forgotten with them)."""
        with self._lock:
            # A file that never changes (STATIC) is never made again, nor one made again
            # whenever it is read (volatile); every other one when a topic it shows changed.
            items = [(p, self._known[p]) for p in self._touched(topics) | written
                     if p in self._known]
        changed: list[str] = []
        gone: list[str] = []
        now = time.time_ns()
        for path, k in sorted(items):
            if any(path.startswith(g + "/") for g in gone[-1:]):
                continue
            node = resolve(self.root, path)
            if node is None or _kind(node) is not k.kind:
                gone.append(path)
                continue
            if k.kind is Dir and path not in self._listed:
                continue                # nothing held of it but its attributes
            if k.volatile or isinstance(node, Attr) and node.slices is not None:
                # Always dropped: its bytes are not kept to compare, or are the text whose
                # size a reader was just given, which its read must get whole.
                changed.append(path)
                continue
            text = render(node)
            if text != k.text:
                with self._lock:
                    k.text, k.changed_ns = text, now
                changed.append(path)
        with self._lock:
            for g in gone:
                for p in [p for p in self._known if p == g or p.startswith(g + "/")]:
                    self._forget(p)
                    self._pages.pop(p, None)
                    self._listed.discard(p)
        return changed, gone

    def _notify(self, changed: list[str], gone: list[str], remade: set[str]) -> None:
        """Have the kernel drop what changed and forget what is gone, by the node ids it
        knows them by (one it does not know holds nothing).

        A directory's listing is dropped whole, and dropped again a tick later if it was
        remade: the kernel fills its cache of a listing after the answer, in the reader's own
        time, so a reader answered just before the change may put the old listing there just
        after the first notice."""
        if not self.notifier.ready:
            return
        for path in changed:
            with self._lock:
                pages = self._pages.pop(path, range(0))
                k = self._known.get(path)
                listing = k is not None and k.kind is Dir
                if listing and path in remade and path in self._listed:
                    self._drop_later(path)
                self._listed.discard(path)      # until the kernel lists it again
            ino = self.nodeid(path)
            if ino is not None:
                self.notifier.inval_inode(ino, None if listing else pages)
        for path in gone:
            self.unlink(path)
            parent, _, name = path.rpartition("/")
            ino = self.nodeid(parent or "/")
            if ino is not None:
                self.notifier.inval_entry(ino, name.encode("utf-8", "surrogateescape"))
