"""Support for the examples' tests: a real optimd on a free loopback port, a
runner for an example script, and checks that a file is a real PNG picture.

The tests run in the venv that example-env.sh makes; each example runs as a
user would run it, `python examples/NAME.py --server URL --out DIR --json F`,
in a child process of that venv's python."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from typing import Any

from PIL import Image

SOURCE_DIR = os.environ["OPTIMD_SOURCE_DIR"]
EXAMPLES = os.path.join(SOURCE_DIR, "examples")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Daemon:
    """``$OPTIMD_BIN --listen tcp://127.0.0.1:0`` with the built plugins; the
    bound URL comes from its ready file. Stopped with SIGTERM."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="optimd-examples-")
        ready = os.path.join(self.dir, "ready")
        self.log_path = os.path.join(self.dir, "optimd.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [os.environ["OPTIMD_BIN"], "--listen", "tcp://127.0.0.1:0",
             "--plugin-dir", os.environ["OPTIMD_PLUGIN_DIR"],
             "--state-dir", os.path.join(self.dir, "state"), "--ready-file", ready],
            stdout=self._log, stderr=subprocess.STDOUT)
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
        self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self.proc.returncode == 0:
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode


class ExampleTestCase(unittest.TestCase):
    """One daemon per class (it must stop cleanly, with no session left
    behind: every example closes what it opened), and a fresh output
    directory per test."""

    daemon: Daemon

    @classmethod
    def setUpClass(cls) -> None:
        cls.daemon = Daemon()

    @classmethod
    def tearDownClass(cls) -> None:
        import optimd

        try:
            with optimd.Client(cls.daemon.url, timeout=10) as client:
                left = [s.session for s in client.sessions()]
        finally:
            status = cls.daemon.stop()
        if status != 0:
            raise AssertionError(f"optimd exited {status}; its log:\n{cls.daemon.log()}")
        if left:
            raise AssertionError(f"the examples left sessions on the daemon: {left}")

    def setUp(self) -> None:
        self.out = tempfile.mkdtemp(prefix="optimd-example-out-")
        self.addCleanup(shutil.rmtree, self.out, True)

    def run_example(self, script: str, *args: str, expect_rc: int = 0) -> tuple[str, Any]:
        """Runs examples/SCRIPT against the daemon; returns its stdout and the
        JSON it wrote (None when it failed, as expected)."""
        summary = os.path.join(self.out, "summary.json")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env.pop("OPTIMD_URL", None)
        proc = subprocess.run(
            [sys.executable, os.path.join(EXAMPLES, script), "--server", self.daemon.url,
             "--out", self.out, "--json", summary, *args],
            capture_output=True, text=True, env=env, timeout=120)
        self.assertEqual(proc.returncode, expect_rc,
                         f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                         f"stderr:\n{proc.stderr}")
        if expect_rc != 0:
            return proc.stdout + proc.stderr, None
        with open(summary) as f:
            return proc.stdout, json.load(f)

    def assert_png(self, name: str, min_size: tuple[int, int] = (300, 200)) -> Image.Image:
        """OUT/NAME is a PNG file that decodes, at least ``min_size`` pixels,
        with a drawing on it (not one flat colour)."""
        path = os.path.join(self.out, name)
        self.assertTrue(os.path.isfile(path), f"{name} was not written; out has {os.listdir(self.out)}")
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(data[:8], PNG_MAGIC, f"{name} is not a PNG")
        self.assertGreater(len(data), 5000, f"{name} is only {len(data)} bytes")
        with Image.open(path) as im:
            im.verify()  # checks the chunks' CRCs; the image must be reopened after
        im = Image.open(path)
        im.load()
        self.assertEqual(im.format, "PNG")
        self.assertGreaterEqual(im.width, min_size[0])
        self.assertGreaterEqual(im.height, min_size[1])
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        self.assertIsNotNone(colours)
        self.assertGreater(len(colours), 16, f"{name} has almost nothing drawn on it")
        return im
