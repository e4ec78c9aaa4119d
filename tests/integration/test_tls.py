"""TLS and who may connect, against the real daemon: a whole session over
tls+tcp:// with a client certificate; a client without a certificate, with
one from another CA, or speaking plain TCP to the TLS port gets nothing; a
daemon refuses to start on a non-loopback address where nothing proves who
a client is, unless told --allow-remote yes. Certificates are made for the
test with openssl. Run by CTest with /usr/bin/python3."""
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import numpy as np

from nngwire import Daemon, NngError, Req, array, tensor


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d):
    """A CA, a server certificate for 127.0.0.1/localhost, a client
    certificate from that CA, and a client certificate from another CA."""
    p = lambda name: os.path.join(d, name)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "rogue_ca"):
        openssl("req", "-x509", *ec, "-keyout", p(ca + ".key"), "-out", p(ca + ".pem"), "-days", "2",
                "-subj", "/CN=optimd test " + ca)
    with open(p("san.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogue_ca")):
        openssl("req", "-new", *ec, "-keyout", p(name + ".key"), "-out", p(name + ".csr"),
                "-subj", "/CN=" + ("localhost" if name == "server" else name))
        extra = ["-extfile", p("san.cnf")] if name == "server" else []
        openssl("x509", "-req", "-in", p(name + ".csr"), "-CA", p(ca + ".pem"), "-CAkey", p(ca + ".key"),
                "-CAcreateserial", "-out", p(name + ".pem"), "-days", "2", *extra)
    return p


def start_fails(*args):
    """Runs the daemon with `args` and returns (exit code, stderr) of a
    refused start."""
    d = tempfile.mkdtemp(prefix="optimd-refused-")
    try:
        r = subprocess.run([os.environ["OPTIMD_BIN"], "--plugin-dir", os.environ["OPTIMD_PLUGIN_DIR"],
                            "--state-dir", os.path.join(d, "state"), *args],
                           capture_output=True, text=True, timeout=30)
        return r.returncode, r.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Tls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki_dir = tempfile.mkdtemp(prefix="optimd-pki-")
        p = make_pki(cls.pki_dir)
        cls.p = staticmethod(p)
        cls.daemon = Daemon("--listen", "tls+tcp://127.0.0.1:0", "--tls-cert", p("server.pem"),
                            "--tls-key", p("server.key"), "--tls-ca", p("ca.pem"))
        deadline = time.monotonic() + 10
        cls.url = None
        while not cls.url and time.monotonic() < deadline:
            m = re.search(r"listening on (tls\+tcp://\S+)", cls.daemon.read_log())
            cls.url = m.group(1) if m else None
            time.sleep(0.02)

    @classmethod
    def tearDownClass(cls):
        rc = cls.daemon.stop()
        cls.daemon.cleanup()
        shutil.rmtree(cls.pki_dir, ignore_errors=True)
        assert rc == 0, rc

    def client(self, cert="client"):
        tls = {"ca": self.p("ca.pem")}
        if cert:
            tls.update(cert=self.p(cert + ".pem"), key=self.p(cert + ".key"))
        return Req(self.url, timeout_ms=2000, tls=tls)

    def test_a_whole_session_over_tls(self):
        self.assertIsNotNone(self.url)
        c = self.client()
        r = c.call("open", session="tls", optimizer="adam", hparams={"lr": 0.1})
        self.assertTrue(r["ok"], r)
        s = {"session": "tls", "token": r["token"]}
        w = np.arange(6, dtype=np.float32)
        self.assertTrue(c.call("register", **s, params={"w": tensor(w)})["ok"])
        step = c.call("step", **s, grads={"w": tensor(np.ones(6, np.float32))})
        self.assertTrue(step["ok"], step)
        # Adam's first step moves every element by lr (g/|g|).
        np.testing.assert_allclose(array(step["params"]["w"]), w - 0.1, rtol=1e-6)
        pulled = c.call("pull", **s)["params"]["w"]
        self.assertEqual(pulled["data"], step["params"]["w"]["data"])
        self.assertTrue(c.call("close", **s)["ok"])
        c.close()

    def test_who_may_not_connect(self):
        # Refused at the handshake (the dial) or, at the latest, the call.
        for cert in (None, "rogue"):
            with self.assertRaises(NngError, msg=str(cert)):
                c = self.client(cert)
                try:
                    c.call("hello")
                finally:
                    c.close()
        with self.assertRaises(NngError):
            plain = Req(self.url.replace("tls+tcp://", "tcp://"), timeout_ms=1000)
            try:
                plain.call("hello")
            finally:
                plain.close()
        # And the daemon serves on.
        c = self.client()
        self.assertTrue(c.call("hello")["ok"])
        c.close()

    def test_start_is_refused_where_nothing_proves_who_a_client_is(self):
        rc, err = start_fails("--listen", "tcp://0.0.0.0:0")
        self.assertNotEqual(rc, 0)
        self.assertIn("--allow-remote", err)
        rc, err = start_fails("--listen", "tls+tcp://127.0.0.1:0")
        self.assertNotEqual(rc, 0)
        self.assertIn("--tls-cert", err)
        rc, err = start_fails("--listen", "tls+tcp://0.0.0.0:0", "--tls-cert", self.p("server.pem"),
                              "--tls-key", self.p("server.key"))
        self.assertIn("--allow-remote", err)
        rc, err = start_fails("--listen", "tls+tcp://127.0.0.1:0", "--tls-cert", self.p("server.pem"),
                              "--tls-key", self.p("missing.key"), "--check-config")
        self.assertEqual(rc, 1, err)
        self.assertIn("TLS", err)
        # Explicitly allowed: it starts (checked without serving).
        rc, err = start_fails("--listen", "tcp://0.0.0.0:0", "--allow-remote", "yes", "--check-config")
        self.assertEqual(rc, 0, err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
