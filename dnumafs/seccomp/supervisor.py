"""The supervisor: `dnumafs run` after it forked the command. It answers the listener's
notifications, reaps the command and every orphan that reparents to it (a child subreaper),
and returns the command's exit status once no process it supervises is left.
"""
from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import sys
import time
from pathlib import Path

from dnumafs.mm.mempolicy import PolicyError

from . import abi
from .calls import Continue, Handlers, View, model_facts

# How often the model's node states are read again (a node brought online meanwhile), and
# the records of exited tasks dropped.
REFRESH_SECONDS = 1.0


def exit_status(wait_status: int) -> int:
    """A shell's view of a wait status: the code, or 128 + the signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def answer(view: View, handlers: Handlers, n: abi.Notification) -> None:
    """Answer one notification; whatever goes wrong, the supervisor goes on."""
    listener = view.listener
    handler = handlers.get(n.nr)
    try:
        if handler is None:
            raise Continue
        result = handler(n)
    except Continue:
        listener.allow(n.id)
    except PolicyError as e:
        listener.send(n.id, error=e.errno)
    except abi.MemoryFault:
        listener.send(n.id, error=errno.EFAULT)
    except OSError as e:
        # The task went away while its /proc files were read, most often.
        listener.send(n.id, error=e.errno or errno.EINVAL)
    except Exception as e:     # never let one call end the supervision of all the others
        print(f"dnumafs run: answering system call {n.nr} of task {n.pid}: {e!r}",
              file=sys.stderr)
        listener.send(n.id, error=errno.EINVAL)
    else:
        if result.fd is None:
            listener.send(n.id, val=result.value)
        else:
            try:
                listener.send_fd(n.id, result.fd, result.fd_flags)
            finally:
                os.close(result.fd)


def supervise(mnt: Path, listener_fd: int, child: int, helpers: tuple[int, ...] = ()) -> int:
    """Serve the listener until the command and every orphan of it have exited."""
    view = View(mnt=mnt, listener=abi.Listener(listener_fd), facts=model_facts(mnt))
    handlers = view.handlers()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # The terminal's signals reach the command too: it decides; ours are passed on.
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    poller = select.poll()
    poller.register(listener_fd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    status: int | None = None
    refreshed = time.monotonic()
    while True:
        try:
            while True:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if pid == child:
                    status = exit_status(wstatus)
        except ChildProcessError:
            if status is not None:
                break
        if status is not None and helpers:
            # The command is done: so are the processes that served it (the events'
            # forwarder), which would otherwise wait for us as we wait for them.
            for pid in helpers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            helpers = ()
        for fd, events in poller.poll(int(REFRESH_SECONDS * 1000)):
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 256):
                        pass
            elif events & select.POLLIN:
                n = view.listener.recv()
                if n is not None:
                    answer(view, handlers, n)
            elif events & (select.POLLHUP | select.POLLERR):
                poller.unregister(listener_fd)     # no supervised task is left
        now = time.monotonic()
        if now - refreshed >= REFRESH_SECONDS:
            refreshed = now
            view.facts = model_facts(mnt)
            view.forget_exited()
    signal.set_wakeup_fd(-1)
    for fd in (wake_r, wake_w, listener_fd):
        os.close(fd)
    return status if status is not None else 1
