"""The daemon's configuration file, --check-config and the memory and
tensor-count limits, against the real daemon. Run by CTest with
/usr/bin/python3."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import unittest

import numpy as np

from nngwire import Daemon, Req, tensor

BIN = os.environ["OPTIMD_BIN"]
PLUGINS = os.environ["OPTIMD_PLUGIN_DIR"]


def run(*args, timeout=30):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout)


class Config(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="optimd-config-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, text):
        path = os.path.join(self.dir, "optimd.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_config_file_and_flags_that_override_it(self):
        conf = self.write(f"""# optimd configuration
listen = tcp://127.0.0.1:0
plugin-dir = {PLUGINS}
state-dir = {self.dir}/state
max-sessions = 1          # one session only
max-tensors = 2
""")
        r = run("--config", conf, "--check-config")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("is fine", r.stderr)
        self.assertIn("would listen on tcp://127.0.0.1:0", r.stderr)
        # Served: the file's limits apply, a flag overrides one of them.
        d = Daemon("--config", conf, "--max-tensors", "3")
        try:
            c = Req(d.url)
            r = c.call("open", session="a", optimizer="sgd", hparams={"lr": 0.1})
            self.assertTrue(r["ok"], r)
            self.assertEqual(c.call("open", session="b", optimizer="sgd", hparams={"lr": 0.1})["error"], "LIMIT")
            s = {"session": "a", "token": r["token"]}
            three = {k: tensor(np.ones(2, np.float32)) for k in "xyz"}
            self.assertTrue(c.call("register", **s, params=three)["ok"])
            four = dict(three, w=tensor(np.ones(2, np.float32)))
            r = c.call("step", **s, grads=four)
            self.assertEqual(r["error"], "LIMIT", r)
            self.assertIn("--max-tensors", r["message"])
            c.close()
        finally:
            self.assertEqual(d.stop(), 0)
            d.cleanup()

    def test_bad_files_are_reported_with_their_line(self):
        conf = self.write("listen = tcp://127.0.0.1:0\nmax-sessions = lots\n")
        r = run("--config", conf, "--check-config")
        self.assertEqual(r.returncode, 2)
        self.assertIn("optimd.conf:2", r.stderr)
        conf = self.write("no-such-key = 1\n")
        r = run("--config", conf)
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown key 'no-such-key'", r.stderr)
        r = run("--config", os.path.join(self.dir, "missing.conf"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("cannot read it", r.stderr)
        r = run("--check-config", "--plugin-dir", os.path.join(self.dir, "nowhere"),
                "--state-dir", os.path.join(self.dir, "state"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot be read", r.stderr)
        r = run("--check-config", "--validator", "/nonexistent/optimd-validate", "--plugin-dir", PLUGINS,
                "--state-dir", os.path.join(self.dir, "state"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot be run", r.stderr)

    def test_systemd_readiness(self):
        """Type=notify: READY=1 once listening, RELOADING=1 and READY=1
        around a SIGHUP rescan, STOPPING=1 at SIGTERM."""
        sock_path = os.path.join(self.dir, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(20)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        proc = subprocess.Popen([BIN, "--listen", "tcp://127.0.0.1:0", "--plugin-dir", PLUGINS,
                                 "--state-dir", os.path.join(self.dir, "state")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.assertEqual(sock.recv(64), b"READY=1")
            proc.send_signal(signal.SIGHUP)
            self.assertEqual(sock.recv(64), b"RELOADING=1")
            self.assertEqual(sock.recv(64), b"READY=1")
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(sock.recv(64), b"STOPPING=1")
            self.assertEqual(proc.wait(30), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sock.close()

    def test_the_example_configuration_checks_out(self):
        example = os.path.join(os.environ["OPTIMD_SOURCE_DIR"], "packaging", "optimd.conf.example")
        r = run("--config", example, "--plugin-dir", PLUGINS, "--state-dir", os.path.join(self.dir, "state"),
                "--validator", "/bin/true", "--check-config")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_requests_in_flight_per_connection(self):
        """--max-in-flight 1: a second request on the same connection while
        the first is still being applied is refused with LIMIT (its id
        echoed); another connection is served."""
        import msgpack
        import struct as st
        d = Daemon("--max-in-flight", "1", "--threads", "1")
        try:
            c = Req(d.url)
            r = c.call("open", session="big", optimizer="adam")
            s = {"session": "big", "token": r["token"]}
            n = 1 << 22
            c.call("register", **s, params={"w": tensor(np.zeros(n, np.float32))})
            host, port = d.url[len("tcp://"):].rsplit(":", 1)
            raw = socket.create_connection((host, int(port)), timeout=30)
            raw.sendall(b"\0SP\0\0\x30\0\0")           # SP header: REQ0
            head = raw.recv(8)
            self.assertEqual(head[:4], b"\0SP\0")

            def frame(req_id, body):
                payload = st.pack(">I", 0x80000000 | req_id) + msgpack.packb(body, use_bin_type=True)
                return st.pack(">Q", len(payload)) + payload
            slow = {"v": 1, "id": 1, "op": "step", **s, "grads": {"w": tensor(np.ones(n, np.float32))},
                    "return": False}
            quick = {"v": 1, "id": 2, "op": "hello"}
            raw.sendall(frame(1, slow) + frame(2, quick))
            replies = {}
            buf = b""
            while len(replies) < 2:
                while len(buf) < 8 or len(buf) < 8 + st.unpack(">Q", buf[:8])[0]:
                    chunk = raw.recv(65536)
                    self.assertTrue(chunk, "connection closed")
                    buf += chunk
                size = st.unpack(">Q", buf[:8])[0]
                payload, buf = buf[8:8 + size], buf[8 + size:]
                rid = st.unpack(">I", payload[:4])[0] & 0x7fffffff
                replies[rid] = msgpack.unpackb(payload[4:], raw=False)
            raw.close()
            # NNG may hand the two frames to their contexts in either order:
            # exactly one is refused, with its own id.
            refused = [k for k, v in replies.items() if not v.get("ok")]
            self.assertEqual(len(refused), 1, replies)
            k = refused[0]
            self.assertEqual((replies[k]["error"], replies[k]["id"]), ("LIMIT", k), replies[k])
            self.assertIn("--max-in-flight", replies[k]["message"])
            self.assertTrue(replies[3 - k]["ok"], replies[3 - k])
            self.assertTrue(c.call("hello")["ok"])                # another connection
            self.assertEqual(c.call("info", **s)["steps"], 1 if k == 2 else 0)
            c.close()
        finally:
            self.assertEqual(d.stop(), 0)
            d.cleanup()

    def test_admin_drop_and_shutdown(self):
        d = Daemon("--admin-token", "admin-secret-0123456789")
        try:
            c = Req(d.url)
            r = c.call("open", session="victim", optimizer="sgd", hparams={"lr": 0.1})
            s = {"session": "victim", "token": r["token"]}
            for op, extra in (("drop", {"session": "victim"}), ("shutdown", {})):
                self.assertEqual(c.call(op, **extra).get("error"), "BAD_TOKEN")
                self.assertEqual(c.call(op, admin_token="wrong", **extra).get("error"), "BAD_TOKEN")
            self.assertTrue(c.call("info", **s)["ok"])
            self.assertTrue(c.call("drop", session="victim", admin_token="admin-secret-0123456789")["ok"])
            self.assertEqual(c.call("info", **s)["error"], "UNKNOWN_SESSION")
            self.assertFalse(os.path.exists(os.path.join(d.state_dir, "sessions", "victim")))
            self.assertEqual(c.call("drop", session="victim", admin_token="admin-secret-0123456789")["error"],
                             "UNKNOWN_SESSION")
            r = c.call("open", session="kept", optimizer="sgd", hparams={"lr": 0.1}, durability="none")
            k = {"session": "kept", "token": r["token"]}
            c.call("register", **k, params={"w": tensor(np.ones(2, np.float32))})
            c.call("step", **k, grads={"w": tensor(np.ones(2, np.float32))})
            # The reply comes, then the daemon stops as on SIGTERM: exit 0,
            # the session snapshotted.
            self.assertTrue(c.call("shutdown", admin_token="admin-secret-0123456789")["ok"])
            self.assertEqual(d.proc.wait(30), 0)
            self.assertTrue(os.path.exists(os.path.join(d.state_dir, "sessions", "kept",
                                                        "snapshot.safetensors")))
            c.close()
        finally:
            d.stop()
            d.cleanup()

    def test_json_logs(self):
        d = Daemon("--log-format", "json")
        try:
            c = Req(d.url)
            c.call("open", session='quote"me', optimizer="sgd", hparams={"lr": 0.1})
            c.close()
        finally:
            self.assertEqual(d.stop(), 0)
            log = d.read_log()
            d.cleanup()
        import json
        lines = [json.loads(l) for l in log.splitlines() if l.strip()]
        self.assertTrue(lines)
        for entry in lines:
            self.assertEqual(set(entry), {"ts", "level", "msg"})
            self.assertIn(entry["level"], ("debug", "info", "warn", "error"))

    def test_memory_limits(self):
        # adam keeps two like-parameter slots: a parameter of N f32 values
        # commits 3 * 4 * N bytes.
        d = Daemon("--max-session-bytes", "1200", "--max-total-bytes", "2000")
        try:
            c = Req(d.url)
            s = {}
            for name in ("a", "b"):
                r = c.call("open", session=name, optimizer="adam")
                s[name] = {"session": name, "token": r["token"]}
            ok = c.call("register", **s["a"], params={"w": tensor(np.ones(100, np.float32))})
            self.assertTrue(ok["ok"], ok)                                     # 1200 bytes
            r = c.call("register", **s["a"], params={"v": tensor(np.ones(1, np.float32))})
            self.assertEqual(r["error"], "LIMIT", r)
            self.assertIn("--max-session-bytes", r["message"])
            r = c.call("register", **s["b"], params={"w": tensor(np.ones(100, np.float32))})
            self.assertEqual(r["error"], "LIMIT", r)                         # 2400 > 2000
            self.assertIn("--max-total-bytes", r["message"])
            self.assertTrue(c.call("register", **s["b"], params={"w": tensor(np.ones(60, np.float32))})["ok"])
            # 1200 + 720 committed: 360 more is over the total, until a
            # closed session gives its share back.
            u = {"u": tensor(np.ones(30, np.float32))}
            self.assertEqual(c.call("register", **s["b"], params=u)["error"], "LIMIT")
            self.assertTrue(c.call("close", **s["a"])["ok"])
            r = c.call("register", **s["b"], params=u)
            self.assertTrue(r["ok"], r)
            c.close()
        finally:
            self.assertEqual(d.stop(), 0)
            d.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
