"""Run a conversion in a child process: a crash in native code fails that format, not the whole build.

TensorFlow's TFLite calibrator has been seen to die with SIGSEGV on a BiLSTM graph; in-process, that took
the build down with it. In a child, the crash becomes a stage failure that names the signal, and the
memory TensorFlow holds is returned when the child ends.
"""
from __future__ import annotations

import multiprocessing
import signal
from multiprocessing.connection import wait
from typing import Any, Callable

from .errors import UserError


def isolated(what: str, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a fresh (spawned) Python process; its result, or its UserError, comes back."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, function, args), daemon=True)
    child.start()
    send.close()
    try:
        wait([receive, child.sentinel])
        outcome = _receive(receive)
        child.join()
    except BaseException:  # Ctrl-C or SIGTERM here: the child must not outlive the build
        child.terminate()
        child.join()
        raise
    finally:
        receive.close()
    if outcome is None:
        code = child.exitcode
        if code is not None and code < 0:
            raise UserError(f"{what} crashed (signal {signal.Signals(-code).name}) inside the converter's native "
                            f"code: the other formats are still made; pass --keep-going to ship them")
        raise UserError(f"{what} ended unexpectedly (exit code {code}; its traceback is above): please report it")
    status, value = outcome
    if status == "error":
        raise value
    return value


def _receive(receive):
    """The child's outcome, or None when it died before sending one (the pipe is closed with nothing in it)."""
    try:
        return receive.recv() if receive.poll() else None
    except EOFError:
        return None


def _child(send, function: Callable[..., Any], args: tuple) -> None:
    # Ctrl-C reaches the whole process group: the parent stops this child and reports it, once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        outcome = ("ok", function(*args))
    except (UserError, OSError) as err:  # OSError: a full disk or an unwritable folder, reported by the CLI
        outcome = ("error", err)
    send.send(outcome)
    send.close()
