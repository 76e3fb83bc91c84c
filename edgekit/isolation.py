"""Run a conversion in a child process: a crash in native code fails that format, not the whole build.

TensorFlow's TFLite calibrator has been seen to die with SIGSEGV on a BiLSTM graph; in-process, that took
the build down with it. In a child, the crash becomes a stage failure that names the signal, and the
memory TensorFlow holds is returned when the child ends. A child can be started ahead of its job, so
that importing the converter (TensorFlow: seconds) happens while the build still exports the model.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.connection import wait
from typing import Any, Callable

from .errors import UserError


class Stopped(Exception):
    """The build ended while a child was converting (it runs beside the build's own work): it was stopped."""


class Converters:
    """The build's conversion children: one may be started early with `warm`, the next `run` gives it its job;
    any other `run` starts a fresh one. Closing ends a warm child that got no job."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._warm: tuple[Any, Any, Any] | None = None  # (process, job sender, outcome receiver)
        self._lock = threading.Lock()

    def warm(self, modules: list[str]) -> None:
        """Start a child that imports `modules` now and then waits for its job (unless one waits already)."""
        if self._warm or not modules:
            return
        jobs, job_sender = self._context.Pipe(duplex=False)
        receive, send = self._context.Pipe(duplex=False)
        child = self._context.Process(target=_warm_child, args=(jobs, send, modules), daemon=True)
        child.start()
        jobs.close()
        send.close()
        self._warm = child, job_sender, receive

    def run(self, what: str, stop: threading.Event, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in a child process; its result, or its UserError, comes back. When `stop` is set,
        the child is terminated and Stopped raised."""
        if stop.is_set():
            raise Stopped(what)
        child, receive = self._start(function, args)
        try:
            while not wait([receive, child.sentinel], timeout=0.2):
                if stop.is_set():
                    raise Stopped(what)
            outcome = _receive(receive)
            child.join()
        except BaseException:  # Ctrl-C, SIGTERM or a stop: the child must not outlive the build
            child.terminate()
            child.join()
            raise
        finally:
            receive.close()
        if outcome is None:
            code = child.exitcode
            if code is not None and code < 0:
                raise UserError(f"{what} crashed (signal {signal.Signals(-code).name}) inside the converter's "
                                f"native code: the other formats are still made; pass --keep-going to ship them")
            raise UserError(f"{what} ended unexpectedly (exit code {code}; its traceback is above): please report it")
        status, value = outcome
        if status == "error":
            raise value
        return value

    def _start(self, function: Callable[..., Any], args: tuple):
        """(child, outcome receiver) working on the job: the warm child when one is waiting, else a fresh one."""
        with self._lock:
            warm, self._warm = self._warm, None
        if warm:
            child, job_sender, receive = warm
            try:
                job_sender.send((function, args))  # waits while the child still imports (a large job)
                job_sender.close()
                return child, receive
            except BaseException as err:
                _end(*warm)
                if not isinstance(err, OSError):  # OSError: it died while importing; a fresh child says why
                    raise
        receive, send = self._context.Pipe(duplex=False)
        child = self._context.Process(target=_child, args=(send, function, args), daemon=True)
        child.start()
        send.close()
        return child, receive

    def close(self) -> None:
        with self._lock:
            warm, self._warm = self._warm, None
        if warm:
            _end(*warm)

    def __enter__(self) -> Converters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end(child, job_sender, receive) -> None:
    job_sender.close()  # a waiting child reads end-of-file and exits; one still importing is stopped
    child.terminate()
    child.join()
    receive.close()


def _receive(receive):
    """The child's outcome, or None when it died before sending one (the pipe is closed with nothing in it)."""
    try:
        return receive.recv() if receive.poll() else None
    except EOFError:
        return None


def _warm_child(jobs, send, modules: list[str]) -> None:
    from .runners.base import silenced

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with silenced():  # TensorFlow logs as it loads; the job itself logs where its stage says
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError:  # a converter that is not installed: its job says so, in its own words
                break
    try:
        function, args = jobs.recv()
    except EOFError:  # the build ended without a job for this child
        return
    _child(send, function, args)


def _child(send, function: Callable[..., Any], args: tuple) -> None:
    # Ctrl-C reaches the whole process group: the parent stops this child and reports it, once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        outcome = ("ok", function(*args))
    except (UserError, OSError) as err:  # OSError: a full disk or an unwritable folder, reported by the CLI
        outcome = ("error", err)
    send.send(outcome)
    send.close()
    # The outcome is delivered; the interpreter's teardown (TensorFlow's: about a second) would only hold up the
    # build, which waits for this process to end before it times anything.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
