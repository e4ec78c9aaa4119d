"""optimd.Client and RemoteOptimizer over tls+tcp:// against the real daemon,
which requires client certificates (--tls-ca): a whole session with a client
certificate, and the clients that must be refused (no client certificate,
a CA that did not issue the daemon's certificate, the wrong server name),
each with a TransportError within the client's timeout instead of a hang.
Certificates are made for the test with openssl."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import numpy as np

import optimd

from support import Daemon


def make_pki(d: str) -> None:
    """ca.pem/ca.key, a server certificate for 127.0.0.1 and localhost, a
    client certificate from the same CA, and rogue_ca.pem, which issued
    nothing here."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "rogue_ca"):
        openssl("req", "-x509", *ec, "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2",
                "-subj", "/CN=optimd python test " + ca)
    with open(os.path.join(d, "san.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-new", *ec, "-keyout", name + ".key", "-out", name + ".csr",
                "-subj", "/CN=" + ("localhost" if name == "server" else name))
        extra = ["-extfile", "san.cnf"] if name == "server" else []
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", name + ".pem", "-days", "2", *extra)


class Tls(unittest.TestCase):
    pki: str
    daemon: Daemon
    url: str

    @classmethod
    def setUpClass(cls) -> None:
        cls.pki = tempfile.mkdtemp(prefix="optimd-py-pki-")
        make_pki(cls.pki)
        cls.daemon = Daemon("--listen", "tls+tcp://127.0.0.1:0",
                            "--tls-cert", cls.file("server.pem"), "--tls-key", cls.file("server.key"),
                            "--tls-ca", cls.file("ca.pem"))
        # The ready file holds the first (plain) listener; the log names both.
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            m = re.search(r"listening on (tls\+tcp://\S+)", cls.daemon.log())
            url = m.group(1) if m else None
            if url is None:
                time.sleep(0.02)
        if url is None:
            cls.tearDownClass()
            raise AssertionError("the daemon logged no tls+tcp:// listener")
        cls.url = url

    @classmethod
    def tearDownClass(cls) -> None:
        status = cls.daemon.stop()
        shutil.rmtree(cls.pki, ignore_errors=True)
        if status != 0:
            raise AssertionError(f"optimd exited {status}; its log:\n{cls.daemon.log()}")

    @classmethod
    def file(cls, name: str) -> str:
        return os.path.join(cls.pki, name)

    def tls(self, **changes: str | None) -> dict[str, str | None]:
        """The options of a client the daemon accepts, with ``changes``."""
        opts: dict[str, str | None] = {
            "tls_ca_file": self.file("ca.pem"),
            "tls_cert_file": self.file("client.pem"),
            "tls_key_file": self.file("client.key"),
            "tls_server_name": "localhost",
        }
        opts.update(changes)
        return opts

    def test_a_whole_session(self) -> None:
        with optimd.Client(self.url, timeout=30, **self.tls()) as client:
            self.assertEqual(client.hello().server, "optimd")
            session = client.open("py-tls", "adam", {"lr": 0.125})
            w = np.arange(6, dtype=np.float32)
            self.assertEqual(client.register(session, {"w": w}), 1)
            g = np.array([1, -1, 2, -2, 0.5, -0.5], dtype=np.float32)
            step = client.step(session, {"w": g})
            self.assertEqual(step.steps, 1)
            # Adam's first step moves each element by lr against sign(g).
            np.testing.assert_allclose(step.params["w"], w - 0.125 * np.sign(g), atol=1e-5)
            pulled = client.pull(session)
            np.testing.assert_array_equal(pulled["w"], step.params["w"])
            client.close_session(session)
            with self.assertRaises(optimd.UnknownSessionError):
                client.pull(session)

    def test_remote_optimizer(self) -> None:
        try:
            import torch
        except ImportError:
            self.skipTest("torch is not importable here")
        from optimd.torch import RemoteOptimizer

        p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 4.0]))
        opt = RemoteOptimizer([p], "sgd", self.url, timeout=30, lr=0.5, **self.tls())
        try:
            p.grad = torch.tensor([2.0, 1.0, -4.0])
            opt.step()
            self.assertEqual(p.detach().tolist(), [0.0, -2.5, 6.0])
        finally:
            opt.delete_sessions()
            opt.close()

    def assert_refused(self, what: str, **changes: str | None) -> None:
        # Refused at the (blocking) dial, or at the latest by the first
        # request once its timeout has passed.
        with self.assertRaises(optimd.TransportError, msg=what) as caught:
            with optimd.Client(self.url, timeout=2, **self.tls(**changes)) as client:
                client.hello()
        self.assertIn("TLS", str(caught.exception), what)
        # In the background the same: a TransportError after the timeout.
        with optimd.Client(self.url, timeout=1, connect=False, **self.tls(**changes)) as client:
            with self.assertRaises(optimd.TransportError, msg=what):
                client.hello()

    def test_refused_clients(self) -> None:
        self.assert_refused("no client certificate", tls_cert_file=None, tls_key_file=None)
        self.assert_refused("another CA", tls_ca_file=self.file("rogue_ca.pem"))
        self.assert_refused("another server name", tls_server_name="not-the-daemon.example")
        # And the daemon serves on.
        with optimd.Client(self.url, timeout=30, **self.tls()) as client:
            self.assertEqual(client.hello().server, "optimd")

    def test_bad_options(self) -> None:
        cases = [
            ("TLS options on tcp://", "tcp://127.0.0.1:1", self.tls(), "tls+tcp://"),
            ("no CA", self.url, self.tls(tls_ca_file=None), "tls_ca_file"),
            ("certificate without key", self.url, self.tls(tls_key_file=None), "tls_key_file"),
            ("missing CA file", self.url, self.tls(tls_ca_file=self.file("nope.pem")), "nope.pem"),
            ("a key for a certificate", self.url, self.tls(tls_cert_file=self.file("ca.key")),
             "ca.key"),
        ]
        for what, url, opts, text in cases:
            with self.assertRaises(ValueError, msg=what) as caught:
                optimd.Client(url, timeout=2, **opts)
            self.assertIn(text, str(caught.exception), what)


if __name__ == "__main__":
    unittest.main()
