"""The FUSE adapter: serves a tree of Attr/Symlink/Dir nodes through a Session (session.py).

It behaves as sysfs, procfs and debugfs do for their readers and writers:
- an Attr's text is made by show() at a read at offset 0 and later offsets are served from
  it, as seq_file does (direct_io, so st_size does not matter and the kernel keeps no page
  cache: the next open sees fresh figures); what open files hold is bounded (HeldTexts);
- every write(2) goes whole to store(), whatever its offset (bash's `>>` writes at st_size),
  and the full length is returned, or the errno store() raised, which `echo` then prints;
- truncate is a no-op, as bash truncates before `echo 5 > f`;
- each file system's own rules (FileSystem: where a missing show or store is refused, sizes,
  modes, write lengths) are the tree's; other mode checks are the kernel's
  (default_permissions).
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from .pagecache import PageCache, kernel_has_no_open
from .session import FileInfo, MountError, Session, serve_session
from .session import mount as fuse_mount
from .tree import (
    LETTER_MODES,
    PAGE_SIZE,
    Attr,
    ChangeSource,
    Dir,
    Node,
    StaticDir,
    Symlink,
    listing,
    resolve,
)

if TYPE_CHECKING:
    from dnumafs.mm.changes import Device

log = logging.getLogger(__name__)

__all__ = ["FileInfo", "MountError", "serve"]


def fail(code: int) -> OSError:
    """The error an operation answers with: its errno reaches the caller (`echo` prints it)."""
    return OSError(code, os.strerror(code))


# Entry and attribute cache lifetimes handed to the kernel, in seconds. Each FUSE request is a
# round trip to this process (two context switches), and on a cold cache opening
# sys/devices/system/node/node0/meminfo costs a lookup per path component and a getattr
# besides the open, read and release; caching for the kernel's usual second (libfuse's
# default) makes a reader that opens a file every so often pay for three requests instead of
# ten. It is safe here: a file's mode and size never change, open, readdir and readlink always
# reach the daemon (so a layout.N that is gone fails to open at once), nodeN never goes away,
# and a name that just appeared is never hidden by a cached "no such entry"
# (an ENOENT is never cached). Only stat() of a destroyed layout.N may pass for up to
# ENTRY_TIMEOUT, as nothing is invalidated in this mode.
ENTRY_TIMEOUT = 1.0
ATTR_TIMEOUT = 1.0
# With the page cache, every change is told to the kernel, so it may keep entries and
# attributes as long as it likes (a day).
CACHED_TIMEOUT = 86400.0
# The most threads serving requests with the page cache (started as requests wait: a writer's
# request waits for its notices, a notice for the pages the kernel is filling, a page for a
# read that another thread serves).
CACHED_THREADS = 16


# The most text that open files may hold at once, identical texts counted once. A reader
# that reads a file in pieces needs its text between its read at offset 0 and the read that
# reaches the end; beyond this, a read that would hold one more text fails with ENOMEM.
HELD_TEXT_LIMIT = 64 << 20


@attrs.define
class HeldTexts:
    """The texts open files hold, shared when identical (many readers of one file between
    two changes of the model read one text), at most `limit` bytes in all."""

    limit: int = HELD_TEXT_LIMIT
    _texts: dict[bytes, list[Any]] = attrs.field(factory=dict)   # text -> [text, holders]
    total: int = 0

    def hold(self, text: bytes) -> bytes:
        """The shared copy of text, held once more; ENOMEM beyond the limit."""
        entry = self._texts.get(text)
        if entry is None:
            if self.total + len(text) > self.limit:
                raise OSError(errno.ENOMEM, "open files hold too much text")
            entry = self._texts[text] = [text, 0]
            self.total += len(text)
        entry[1] += 1
        return entry[0]

    def release(self, text: bytes) -> None:
        entry = self._texts[text]
        entry[1] -= 1
        if entry[1] == 0:
            del self._texts[text]
            self.total -= len(text)


@attrs.define
class OpenFile:
    """One open file: its attribute, and the text of its last read at offset 0 while a
    reader reading in pieces still needs it (then only its length)."""

    attr: Attr
    text: bytes | None = None
    length: int | None = None


@attrs.define
class RateLimit(logging.Filter):
    """At most `burst` records every `interval` seconds pass, as the kernel's printk
    ratelimit: a request that fails the same way a thousand times cannot flood the log. The
    number suppressed is told with the next record that passes."""

    burst: int = 10
    interval: float = 5.0
    _begin: float = 0.0
    _passed: int = 0
    _missed: int = 0

    def __attrs_post_init__(self) -> None:
        logging.Filter.__init__(self)

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._begin > self.interval:
            self._begin, self._passed = now, 0
        if self._passed >= self.burst:
            self._missed += 1
            return False
        self._passed += 1
        if self._missed:
            record.msg = f"{record.msg} ({self._missed} messages suppressed before this one)"
            self._missed = 0
        return True


@attrs.define
class OpenDir:
    """One open directory: the listing its readdir at offset 0 made, until served whole."""

    text: bytes | None = None


class TreeOperations:
    """The operations on paths a Session serves, over a root Dir.

    Safe from any number of threads (the tree's own locks guard the model; the table of open
    files has its own lock), though serve() uses a single thread for them (see there).
    """

    def __init__(self, root: Dir) -> None:
        self.root = root
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.mount_time_ns = time.time_ns()
        self._lock = threading.Lock()
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, OpenDir] = {}
        self._held = HeldTexts()
        self._next_fh = itertools.count(1)

    def __call__(self, op: str, *args: Any) -> Any:
        """Dispatch one operation, letting nothing but an errno out.

        An OSError without a positive errno, or anything unexpected, is logged (rate-limited)
        and answered with EIO.
        """
        try:
            return getattr(self, op)(*args)
        except OSError as e:
            if isinstance(e.errno, int) and e.errno > 0:
                raise fail(e.errno) from None
            log.error("%s %r: OSError without errno", op, args[:1], exc_info=True)
            raise fail(errno.EIO) from None
        except BaseException:
            log.error("%s %r failed", op, args[:1], exc_info=True)
            raise fail(errno.EIO) from None

    # --- lookups -------------------------------------------------------------------------

    def _resolve(self, path: str) -> Node:
        node = resolve(self.root, path)
        if node is None:
            raise fail(errno.ENOENT)
        return node

    def _attr(self, path: str) -> Attr:
        node = self._resolve(path)
        if isinstance(node, Dir):
            raise fail(errno.EISDIR)
        if not isinstance(node, Attr):
            raise fail(errno.EINVAL)
        return node

    def _dir(self, path: str) -> Dir:
        node = self._resolve(path)
        if not isinstance(node, Dir):
            raise fail(errno.ENOTDIR)
        return node

    def _open_file(self, fi: Any) -> OpenFile:
        with self._lock:
            f = self._files.get(fi.fh)
        if f is None:
            raise fail(errno.EBADF)
        return f

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        node = self._resolve(path)
        t = self.mount_time_ns
        st = dict(st_uid=self.uid, st_gid=self.gid, st_atime=t, st_mtime=t, st_ctime=t)
        if isinstance(node, Dir):
            st.update(st_mode=stat.S_IFDIR | node.mode, st_nlink=2)
        elif isinstance(node, Symlink):
            st.update(st_mode=stat.S_IFLNK | 0o777, st_nlink=1,
                      st_size=len(node.target().encode()))
        else:
            st.update(st_mode=stat.S_IFREG | node.mode, st_nlink=1,
                      st_size=node.fs.st_size, st_blksize=PAGE_SIZE)
        return st

    def opendir(self, path: str) -> int:
        self._dir(path)
        with self._lock:
            fh = next(self._next_fh)
            self._dirs[fh] = OpenDir()
        return fh

    def readdir(self, path: str, fh: int | None, offset: int = 0
                ) -> Iterator[tuple[str, int, int]]:
        """(name, S_IF* type, offset of the next entry) from offset on: the type gives
        readdir's d_type (DT_DIR, DT_REG, DT_LNK), as sysfs does."""
        node = self._dir(path)
        with self._lock:
            d = self._dirs.get(fh) if fh else None
            text = d.text if d is not None else None
        if offset == 0 or text is None:
            text = listing(node)
            if d is not None:
                with self._lock:
                    text = self._hold(d, text) or text
        return self._entries(d, text, offset)

    def _hold(self, h: OpenFile | OpenDir, text: bytes | None) -> bytes | None:
        """Let h hold text (None: nothing) instead of what it held; the shared copy (lock
        held)."""
        if h.text is not None and h.text is not text:
            self._held.release(h.text)
            h.text = None
        if text is not None and h.text is None:
            h.text = self._held.hold(text)
        return h.text

    def _entries(self, d: OpenDir | None, text: bytes, offset: int
                 ) -> Iterator[tuple[str, int, int]]:
        if 0 < offset < len(text) and text[offset - 1] != ord("\n"):
            # not where an entry starts: a listing made since, or a seek to anywhere
            offset = text.find(b"\n", offset) + 1 or len(text)
        while offset < len(text):
            end = text.index(b"\n", offset) + 1
            yield (text[offset + 1:end - 1].decode("utf-8", "surrogateescape"),
                   LETTER_MODES[text[offset]],
                   end)
            offset = end
        with self._lock:                # served whole: the listing is no longer needed
            if d is not None and d.text is text:
                self._hold(d, None)

    def releasedir(self, path: str, fh: int) -> int:
        with self._lock:
            d = self._dirs.pop(fh, None)
            if d is not None:
                self._hold(d, None)
        return 0

    def readlink(self, path: str) -> str:
        node = self._resolve(path)
        if not isinstance(node, Symlink):
            raise fail(errno.EINVAL)
        return node.target()

    # --- files -----------------------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        attr = self._attr(path)
        accmode = fi.flags & os.O_ACCMODE
        reading = accmode in (os.O_RDONLY, os.O_RDWR)
        writing = accmode in (os.O_WRONLY, os.O_RDWR)
        if attr.fs.refuse_at_open and ((reading and attr.show is None)
                                       or (writing and attr.store is None)):
            raise fail(errno.EACCES)
        with self._lock:
            fh = next(self._next_fh)
            self._files[fh] = OpenFile(attr)
        fi.fh = fh
        fi.direct_io = 1
        fi.keep_cache = 0
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        """A read at offset 0 makes a fresh text, as seq_file does; later offsets are served
        from it, so a reader reading in pieces sees one text. The text is kept only until a
        read reaches its end."""
        f = self._open_file(fi)
        if f.attr.slices is not None:       # binary: each read makes only its own bytes
            return f.attr.read_at(offset, size)
        with self._lock:
            text, length = f.text, f.length
        if offset > 0 and text is None and length is not None and offset >= length:
            return b""
        if offset == 0 or text is None:
            text = f.attr.read()
        data = text[offset:offset + size]
        with self._lock:            # kept while a reader reading in pieces needs the rest
            self._hold(f, text if offset + size < len(text) else None)
            f.length = len(text)
        return data

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        self._open_file(fi).attr.write(data)
        return len(data)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        """A no-op (bash truncates before `echo 5 > f`); refused where the open of a file
        without store is refused, so that `echo 1 > proc/meminfo` fails at its write (EIO),
        as in Linux, and not at the truncate."""
        attr = self._open_file(fh).attr if fh is not None else self._attr(path)
        if attr.store is None and attr.fs.refuse_at_open:
            raise fail(errno.EACCES)
        return 0

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            f = self._files.pop(fi.fh, None)
            if f is not None:
                self._hold(f, None)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        # For its errno: were it answered ENOSYS, `echo 1 > MNT/typo` would say "Function
        # not implemented" where sysfs says "Permission denied".
        raise fail(errno.EACCES)

    def _eperm(self, *args: Any) -> int:
        """sysfs refuses to make, remove, link, rename, chmod, chown or touch anything with
        EPERM (kernfs has no setattr for them from user space)."""
        raise fail(errno.EPERM)

    chmod = chown = link = mkdir = mknod = rename = rmdir = symlink = unlink = utimens = _eperm


class CachedOperations(TreeOperations):
    """The operations when the kernel serves reads from its page cache (see pagecache.py):
    open answers ENOSYS, so the kernel sends no open or release for the mount's files and
    keeps their pages; getattr gives each file's exact length and the time its text last
    changed; a write reaches store() and returns once the kernel has dropped what it changed.

    Without open, a file's own refusals happen where requests still come: a write of a file
    without store fails at its truncate (`echo 1 > f`, O_TRUNC) or at the write, a read of a
    file without show at the read (its st_size is a page, so that the read reaches us); other
    users get the mode bits checked by the kernel, as before.
    """

    def __init__(self, root: Dir, cache: PageCache, changes: ChangeSource | None) -> None:
        super().__init__(root)
        self.cache = cache
        self.changes = changes

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        node = self._resolve(path)
        st = super().getattr(path, fh)
        if isinstance(node, Dir):
            self.cache.known(path, node)         # for the notice when it goes away
            return st
        known = self.cache.known(path, node)
        if isinstance(node, Attr):
            st["st_size"] = (node.slices.size() if node.slices is not None
                             else PAGE_SIZE if known.text is None else len(known.text))
            if node.volatile and known.text == b"":
                self.cache.expire(path)
            st["st_mtime"] = st["st_ctime"] = known.changed_ns
        return st

    def open(self, path: str, fi: Any) -> int:
        raise fail(errno.ENOSYS)         # FUSE_NO_OPEN_SUPPORT: no open, no release

    def readdir(self, path: str, fh: int | None, offset: int = 0
                ) -> Iterator[tuple[str, int, int]]:
        """The listing the kernel then keeps (the session answers no opendir, so every
        directory is FOPEN_CACHE_DIR) until told it changed."""
        node = self._dir(path)
        return self._entries(None, self.cache.listed(path, node, offset), offset)

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        """Pages for the kernel's cache, from the text the kernel was given the size of."""
        node = self._attr(path)
        if node.slices is not None:
            self.cache.known(path, node)        # so that a change drops the pages read
            data = node.read_at(offset, size)
            self.cache.filled(path, offset, len(data))
            return data
        if node.show is None:
            raise fail(node.fs.no_show_errno)
        text = self.cache.known(path, node, sized=True).text
        if text is None:                       # the show failed (a layout destroyed)
            text = node.read()
        data = text[offset:offset + size]
        self.cache.filled(path, offset, len(data))
        return data

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        """store(), then have the kernel drop what it changed before answering."""
        if self.changes is not None:
            self.changes.take_announced()       # what came before is not this write's
        ok = False
        try:
            self._attr(path).write(data)
            ok = True
            whole = -offset % PAGE_SIZE         # the pages the kernel filled whole
            self.cache.filled(path, offset + whole,
                              (len(data) - whole) // PAGE_SIZE * PAGE_SIZE)
        finally:
            announced = self.changes.take_announced() if self.changes is not None else None
            # A store that announced nothing may still have changed something (a new file's
            # store, state outside the model): take it as a change of anything.
            if ok and announced == frozenset():
                announced = None
            self.cache.sync([path], announced if ok else frozenset())
        return len(data)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        return super().truncate(path, length, None)

    def release(self, path: str, fi: Any) -> int:
        return 0


def serve(root: Dir, mountpoint: str, *, allow_other: bool = False, debug: bool = False,
          per_open: bool = False, shown: Callable[[list[Device]], None] | None = None
          ) -> None:
    """Mount root at mountpoint and serve it in this process until unmounted.

    Reads come from the kernel's page cache (CachedOperations), unless per_open asks for a
    text per open (TreeOperations), or the kernel cannot keep pages without open (before
    4.19), which is then said in the log.

    Always in the foreground; callers that want a daemon run this in a child process. A
    SIGINT, SIGTERM or SIGHUP unmounts, and then this returns. debug writes a line per
    request to standard error. Raises MountError if the mount fails.
    """
    limit = RateLimit()
    for name in (__name__, "dnumafs.vfs.session", "dnumafs.vfs.pagecache"):
        logging.getLogger(name).addFilter(limit)
    if not per_open and not kernel_has_no_open():
        log.warning("kernel %s keeps no page cache without open (Linux 4.19+): "
                    "serving a text per open instead", os.uname().release)
        per_open = True
    changes = root.changes if isinstance(root, StaticDir) else None
    if per_open:
        if changes is not None and shown is not None:
            # A text is made at each open, under the model's lock the change holds: a
            # reader told of the change sees it.
            changes.subscribe(lambda _topics, devices: shown(list(devices)) if devices
                              else None)
        # One thread serves every request, one after another. Every show and store takes the
        # machine lock anyway, so more threads would only contend for it and for the GIL:
        # measured on 2 CPUs, one thread reads node0/meminfo a quarter faster alone and more
        # than twice as fast with 4 readers at once.
        session = Session(TreeOperations(root), fuse_mount(mountpoint, allow_other=allow_other),
                          entry_timeout=ENTRY_TIMEOUT, attr_timeout=ATTR_TIMEOUT, debug=debug)
        serve_session(session, mountpoint)
        return
    # Several threads: a writer waits for its notices, which wait for the kernel's pages,
    # which may wait for a read being served meanwhile.
    cache = PageCache(root, shown=shown)
    if changes is not None:
        changes.subscribe(cache.changed)
    session = Session(CachedOperations(root, cache, changes),
                      fuse_mount(mountpoint, allow_other=allow_other),
                      entry_timeout=CACHED_TIMEOUT, attr_timeout=CACHED_TIMEOUT,
                      cache_dirs=True, debug=debug, on_init=cache.attach,
                      max_threads=CACHED_THREADS)
    cache.start()
    try:
        serve_session(session, mountpoint)
    finally:
        cache.stop()
