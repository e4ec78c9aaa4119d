"""Test support for the Python client: a real optimd on a free loopback port,
and a fake REP server that answers with whatever bytes a test gives it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
from collections.abc import Callable

import pynng


class Daemon:
    """``$OPTIMD_BIN --listen tcp://127.0.0.1:0`` with the test plugins,
    stopped with SIGTERM. ``url`` is the address it bound."""

    def __init__(self, *extra_args: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="optimd-py-")
        ready = os.path.join(self.dir, "ready")
        self.log_path = os.path.join(self.dir, "optimd.log")
        self._log = open(self.log_path, "w")
        args = [
            os.environ["OPTIMD_BIN"],
            "--listen", "tcp://127.0.0.1:0",
            "--plugin-dir", os.environ["OPTIMD_PLUGIN_DIR"],
            "--state-dir", os.path.join(self.dir, "state"),
            "--ready-file", ready,
            *extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(ready):
                with open(ready) as f:
                    self.url = f.read().strip()
                if self.url:
                    return
            if self.proc.poll() is not None:
                raise RuntimeError("optimd exited during start-up:\n" + self.log())
            time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError("optimd not ready after 60 s")

    def log(self) -> str:
        # stop() closes it; a failed class teardown still wants the text.
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status (the daemon must exit 0,
        ASan builds included, for a test to pass)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        status = self.proc.returncode
        if status == 0:
            shutil.rmtree(self.dir, ignore_errors=True)
        return status


class DaemonTestCase(unittest.TestCase):
    """One daemon for the whole class, started with ``DAEMON_ARGS``; the
    class fails if it does not stop cleanly."""

    DAEMON_ARGS: tuple[str, ...] = ()
    daemon: Daemon

    @classmethod
    def setUpClass(cls) -> None:
        cls.daemon = Daemon(*cls.DAEMON_ARGS)

    @classmethod
    def tearDownClass(cls) -> None:
        status = cls.daemon.stop()
        if status != 0:
            raise AssertionError(f"optimd exited {status}; its log:\n{cls.daemon.log()}")


class DaemonsTestCase(unittest.TestCase):
    """``DAEMONS`` daemons for the whole class (several servers of one
    cluster); the class fails if any does not stop cleanly."""

    DAEMONS = 4
    daemons: list[Daemon]

    @classmethod
    def setUpClass(cls) -> None:
        cls.daemons = []
        try:
            for _ in range(cls.DAEMONS):
                cls.daemons.append(Daemon())
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        failed = []
        for d in cls.daemons:
            status = d.stop()
            if status != 0:
                failed.append(f"optimd exited {status}; its log:\n{d.log()}")
        if failed:
            raise AssertionError("\n".join(failed))


class FakeServer:
    """A REP socket on a free port, served by a thread: each request goes to
    ``answer(request_bytes)``, which returns the reply bytes or None (no
    reply: the request is dropped). ``requests`` records what came in."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self._socket = pynng.Rep0(listen="tcp://127.0.0.1:0", recv_timeout=100)
        # str() gives "127.0.0.1:PORT" (.port is in network byte order).
        self.url = f"tcp://{self._socket.listeners[0].local_address}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                ctx = self._socket.new_context()
            except pynng.Closed:
                return
            try:
                try:
                    request = ctx.recv()
                except pynng.Timeout:
                    continue
                self.requests.append(request)
                reply = self.answer(request)
                if reply is not None:
                    ctx.send(reply)
            except pynng.Closed:
                return
            finally:
                try:
                    ctx.close()
                except pynng.NNGException:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
