"""Ctrl-C (SIGINT) and SIGTERM in the `jaxconv` command: one line on stderr, exit 130 / 143, at any moment.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread
happens to be: inside an import it prints a traceback, and inside a callback
that JAX runs from the garbage collector the exception is swallowed ("Exception
ignored in ...") and the run goes on. The command installs `install`'s
handlers instead, as early as it can: `jaxconv/__init__.py` imports this
module before anything else, and importing it runs `install_for_command`. They never raise:

- outside a run's `deferred()` section (importing, parsing, loading the data,
  compiling) nothing is being written: the handler writes the command's
  one-line message to stderr and ends the process there (`os._exit`);
- inside it (the run holds its directory and writes files) the handler only
  records the signal; the loop answers at its next safe point
  (`stop_if_asked`, between steps and after each epoch's save), raising
  KeyboardInterrupt, which the loop reports as where the run stands.
  A second signal while the first waits ends the process at once: every file
  is written atomically, so no half-written file is left, only a temporary
  one that the next run removes.

The exit status is 128 + the signal's number, as a shell reports a process the
signal ended: 130 for SIGINT, 143 for SIGTERM. Only the standard library is
imported here. A Python caller of `jaxconv.loop.fit` keeps Python's own Ctrl-C:
nothing here acts unless `install` was called.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the signals that stop a run cleanly

_state = {"installed": False, "deferred": 0, "signum": None,
          "message": "jaxconv: interrupted while starting up; nothing was written",  # `set_message` names the run
          "again": "jaxconv: interrupted again; stopped at once"}


def exit_code(signum: int) -> int:
    """The exit status of a process stopped by signal `signum`: 128 + its number (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


def describe(message: str, signum: int) -> str:
    """`message` ("... interrupted ...") naming the signal when it is not Ctrl-C's SIGINT."""
    if signum == signal.SIGINT:
        return message
    return message.replace("interrupted", f"interrupted by {signal.Signals(signum).name}", 1)


def install(message: Optional[str] = None) -> bool:
    """Handle SIGINT and SIGTERM as this module says; `message` is the line printed when one stops the process
    outside a run. Idempotent; does nothing outside the main thread (where Python cannot set handlers).
    Returns whether the handlers are installed."""
    if message is not None:
        _state["message"] = message
    if _state["installed"]:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored (nohup, a shell's background job): left so
            signal.signal(signum, _handler)
    _state["installed"] = True
    return True


def install_for_command() -> None:
    """`install` when this process is the `jaxconv` command (its script, or `python -m jaxconv.cli`), else nothing:
    importing jaxconv as a library leaves the signal handlers alone."""
    script = os.path.basename(sys.argv[0] if sys.argv else "")
    orig = list(getattr(sys, "orig_argv", []))
    as_module = any(a == "-m" and b == "jaxconv.cli" for a, b in zip(orig, orig[1:]))
    if script in ("jaxconv", "jaxconv.exe") or as_module:
        install()


def set_message(message: str, again: Optional[str] = None) -> None:
    """The line printed when a signal stops the process outside a run (e.g. naming --out once it is known), and
    `again`, the one for a second signal inside a run."""
    _state["message"] = message
    if again is not None:
        _state["again"] = again


def pending() -> Optional[int]:
    """The signal received inside `deferred()` and not yet answered, or None."""
    return _state["signum"]


def stop_if_asked() -> None:
    """A safe point: raise KeyboardInterrupt when a signal is pending (the loop reports where the run stands)."""
    if _state["signum"] is not None:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred():
    """A section whose signals wait for the next `stop_if_asked` instead of ending the process (nests)."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1


def exit_now(signum: int, message: Optional[str] = None) -> None:
    """Write the one-line message (`message` or the installed one) to stderr and end the process: 128 + signum."""
    text = describe(message or _state["message"], signum) + "\n"
    with contextlib.suppress(Exception):  # the main thread may be inside a write to stdout: never fail here
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.write(2, text.encode())
    os._exit(exit_code(signum))


def _handler(signum, frame) -> None:
    """Record a signal inside a run (answered at its next safe point); end the process outside one, or on a
    second signal."""
    if not _state["deferred"]:
        exit_now(signum)
    if _state["signum"] is not None:
        exit_now(signum, _state["again"])
    _state["signum"] = signum


install_for_command()  # on import: the package imports this module first, before JAX
