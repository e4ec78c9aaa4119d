"""The Prometheus endpoint (--metrics-listen): a real daemon, real requests
over NNG, real HTTP. The exposition is parsed strictly by the text format's
grammar here, and its numbers are checked against what the test did."""
import collections
import math
import os
import re
import socket
import subprocess
import tempfile
import threading
import unittest
import urllib.error
import urllib.request

import msgpack
import numpy as np

from nngwire import Daemon, Req, tensor

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
FLOAT = r"[+-]?(?:Inf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL_NAME}={LABEL_VALUE},)*(?:{LABEL_NAME}={LABEL_VALUE})?)\}})?"
                    rf" ({FLOAT})(?: (-?\d+))?$")
LABEL = re.compile(rf"({LABEL_NAME})=({LABEL_VALUE})")
HELP = re.compile(rf"^# HELP ({NAME}) (.*)$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")


def unescape(quoted):
    out, i, s = [], 0, quoted[1:-1]
    while i < len(s):
        if s[i] == "\\":
            out.append({"\\": "\\", '"': '"', "n": "\n"}[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_value(text):
    return {"+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf}.get(text, float(text))


def parse_exposition(text):
    """{family: {"type", "help", "samples": [(name, {label: value}, value)]}},
    raising AssertionError where the text breaks the 0.0.4 text format or
    the rules every family here must follow."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families = collections.OrderedDict()
    current = None
    seen = set()
    for line in text[:-1].split("\n"):
        m = HELP.match(line)
        if m:
            name = m.group(1)
            assert name not in families, f"second HELP for {name}"
            families[name] = {"help": m.group(2), "type": None, "samples": []}
            current = name
            continue
        m = TYPE.match(line)
        if m:
            name = m.group(1)
            assert name == current and families[name]["type"] is None and not families[name]["samples"], \
                f"TYPE {name} must follow its HELP, once, before its samples"
            families[name]["type"] = m.group(2)
            continue
        assert not line.startswith("#"), f"unexpected comment line: {line!r}"
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels_text, value = m.group(1), m.group(2) or "", m.group(3)
        assert current is not None and families[current]["type"], f"sample before HELP and TYPE: {line!r}"
        kind = families[current]["type"]
        allowed = {current} if kind != "histogram" else {current + s for s in ("_bucket", "_sum", "_count")}
        assert name in allowed, f"{name} is not part of family {current}"
        labels = {}
        for lm in LABEL.finditer(labels_text):
            assert lm.group(1) not in labels, f"label {lm.group(1)} twice: {line!r}"
            labels[lm.group(1)] = unescape(lm.group(2))
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, f"duplicate sample {key}"
        seen.add(key)
        families[current]["samples"].append((name, labels, parse_value(value)))
    for name, fam in families.items():
        assert fam["type"], f"{name} has no TYPE"
        assert name.startswith("optimd_"), name
        if fam["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} should end in _total"
            assert all(v >= 0 and v == int(v) for _, _, v in fam["samples"]), name
        if fam["type"] == "histogram":
            check_histogram(name, fam["samples"])
    return families


def check_histogram(name, samples):
    buckets = [(labels["le"], v) for n, labels, v in samples if n == name + "_bucket"]
    assert all(set(labels) == {"le"} for n, labels, _ in samples if n == name + "_bucket")
    counts = [v for n, _, v in samples if n == name + "_count"]
    sums = [v for n, _, v in samples if n == name + "_sum"]
    assert len(counts) == 1 and len(sums) == 1, f"{name}: one _count and one _sum"
    bounds = [parse_value(le) for le, _ in buckets]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), f"{name}: le not increasing"
    assert bounds and bounds[-1] == math.inf, f"{name}: no +Inf bucket"
    values = [v for _, v in buckets]
    assert values == sorted(values), f"{name}: buckets not cumulative: {values}"
    assert values[-1] == counts[0], f"{name}: +Inf bucket {values[-1]} != _count {counts[0]}"
    assert sums[0] >= 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(families, name, **labels):
    """The value of the one sample of `name` with exactly these labels."""
    fam = name
    if fam not in families:
        fam = re.sub(r"_(bucket|sum|count)$", "", name)
    found = [v for n, l, v in families[fam]["samples"] if n == name and l == labels]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


class MetricsDaemon:
    """A daemon with its metrics endpoint on a free loopback port."""

    def __init__(self, *args):
        self.port = free_port()
        self.daemon = Daemon("--metrics-listen", f"127.0.0.1:{self.port}", *args)
        self.base = f"http://127.0.0.1:{self.port}"

    def get(self, path="/metrics"):
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return r.status, r.headers, r.read().decode("utf-8")

    def scrape(self):
        status, headers, body = self.get()
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers["Content-Type"]
        return parse_exposition(body)

    def stop(self):
        rc = self.daemon.stop()
        log = self.daemon.read_log()
        self.daemon.cleanup()
        return rc, log


class Counting:
    """A REQ socket that tallies what it sent and received, and which op and
    result code every request should be counted under."""

    def __init__(self, url, tally):
        self.req = Req(url)
        self.tally = tally

    def raw(self, payload, op_label):
        reply_bytes = self.req.roundtrip_bytes(payload)
        reply = msgpack.unpackb(reply_bytes, raw=False)
        with self.tally["lock"]:
            self.tally["in"] += len(payload)
            self.tally["out"] += len(reply_bytes)
            self.tally["requests"][(op_label, "OK" if reply["ok"] else reply["error"])] += 1
        return reply

    def call(self, op, op_label=None, **fields):
        req = {"v": 1, "id": 7, "op": op}
        req.update(fields)
        return self.raw(msgpack.packb(req, use_bin_type=True), op_label or op)

    def close(self):
        self.req.close()


def new_tally():
    return {"lock": threading.Lock(), "in": 0, "out": 0, "requests": collections.Counter()}


class Metrics(unittest.TestCase):
    def test_counts_match_what_was_done(self):
        # Logs reach the disk once a minute: a logged step stays unflushed
        # for the whole test, and the lag must show it.
        md = MetricsDaemon("--sync-interval", "60000")
        try:
            self._counts(md)
        finally:
            rc, log = md.stop()
        self.assertEqual(rc, 0, log)

    def _counts(self, md):
        first = md.scrape()
        self.assertEqual(first["optimd_requests_total"]["samples"], [])
        self.assertEqual(one(first, "optimd_sessions"), 0)
        self.assertEqual(one(first, "optimd_step_duration_seconds_count"), 0)
        self.assertEqual(one(first, "optimd_durability_lag_seconds"), 0)
        self.assertEqual(one(first, "optimd_request_bytes_total"), 0)

        tally = new_tally()
        c = Counting(md.daemon.url, tally)
        self.assertTrue(c.call("hello")["ok"])
        plugins = c.call("plugins")
        self.assertTrue(plugins["ok"])
        r = c.call("open", session="interval", optimizer="adam", hparams={"lr": 0.01}, durability="interval")
        self.assertTrue(r["ok"], r)
        s = {"session": "interval", "token": r["token"]}
        rng = np.random.default_rng(3)
        r = c.call("register", **s, params={"w": tensor(rng.standard_normal((4, 3)).astype(np.float32))})
        self.assertTrue(r["ok"], r)
        ok_steps = 0
        for _ in range(3):
            r = c.call("step", **s, grads={"w": tensor(rng.standard_normal((4, 3)).astype(np.float32))})
            self.assertTrue(r["ok"], r)
            ok_steps += 1
        for _ in range(2):
            r = c.call("step", session="interval", token="0" * 32,
                       grads={"w": tensor(np.ones((4, 3), np.float32))})
            self.assertEqual(r.get("error"), "BAD_TOKEN")
        r = c.call("step", session="nobody", token="x", grads={})
        self.assertEqual(r.get("error"), "UNKNOWN_SESSION")
        r = c.call("frobnicate", op_label="unknown")
        self.assertEqual(r.get("error"), "UNKNOWN_OP")
        r = c.raw(b"\xc1", "unknown")
        self.assertEqual(r.get("error"), "MALFORMED")
        r = c.raw(msgpack.packb({"v": 99, "id": 1, "op": "hello"}), "unknown")
        self.assertEqual(r.get("error"), "VERSION")
        r = c.call("open", session="always", optimizer="sgd", hparams={"lr": 0.1}, durability="always")
        self.assertTrue(r["ok"], r)
        always = {"session": "always", "token": r["token"]}

        mid = md.scrape()
        self.assertEqual(one(mid, "optimd_sessions"), 2)
        self.assertTrue(c.call("close", **always)["ok"])

        # Requests from several threads at once, each counted once.
        def hellos(n):
            own = Counting(md.daemon.url, tally)
            for _ in range(n):
                assert own.call("hello")["ok"]
            own.close()
        threads = [threading.Thread(target=hellos, args=(25,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads))
        c.close()

        fams = md.scrape()
        got = collections.Counter()
        for name, labels, value in fams["optimd_requests_total"]["samples"]:
            self.assertEqual(set(labels), {"op", "code"})
            got[(labels["op"], labels["code"])] = int(value)
        self.assertEqual(dict(got), dict(tally["requests"]))
        self.assertEqual(got[("hello", "OK")], 101)
        self.assertEqual(one(fams, "optimd_request_bytes_total"), tally["in"])
        self.assertEqual(one(fams, "optimd_reply_bytes_total"), tally["out"])

        self.assertEqual(one(fams, "optimd_step_duration_seconds_count"), ok_steps)
        self.assertGreater(one(fams, "optimd_step_duration_seconds_sum"), 0)
        self.assertEqual(one(fams, "optimd_sessions"), 1)

        loaded = {(l["id"], l["version"]) for _, l, v in fams["optimd_plugin_loaded"]["samples"]}
        self.assertTrue(all(v == 1 for _, _, v in fams["optimd_plugin_loaded"]["samples"]))
        self.assertEqual(loaded, {(p["id"], p["version"]) for p in plugins["plugins"]})

        lag = one(fams, "optimd_durability_lag_seconds")
        self.assertGreater(lag, 0)
        later = md.scrape()
        self.assertGreaterEqual(one(later, "optimd_durability_lag_seconds"), lag)
        self.assertGreaterEqual(one(later, "optimd_uptime_seconds"), one(fams, "optimd_uptime_seconds"))
        # Scrapes are not requests.
        self.assertEqual(one(later, "optimd_request_bytes_total"), tally["in"])

        with open(f"/proc/{md.daemon.proc.pid}/statm") as f:
            resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        rss = one(later, "optimd_resident_memory_bytes")
        self.assertTrue(resident / 2 < rss < resident * 2, (rss, resident))

    def test_lag_is_zero_when_every_log_is_flushed(self):
        md = MetricsDaemon("--sync-interval", "60000")
        try:
            tally = new_tally()
            c = Counting(md.daemon.url, tally)
            for name, durability in (("a", "always"), ("n", "none")):
                r = c.call("open", session=name, optimizer="sgd", hparams={"lr": 0.1}, durability=durability)
                self.assertTrue(r["ok"], r)
                s = {"session": name, "token": r["token"]}
                self.assertTrue(c.call("register", **s, params={"w": tensor(np.ones(3))})["ok"])
                self.assertTrue(c.call("step", **s, grads={"w": tensor(np.ones(3))})["ok"])
            c.close()
            fams = md.scrape()
            self.assertEqual(one(fams, "optimd_durability_lag_seconds"), 0)
            self.assertEqual(one(fams, "optimd_step_duration_seconds_count"), 2)
        finally:
            rc, log = md.stop()
        self.assertEqual(rc, 0, log)

    def test_unaligned_gradients_are_counted(self):
        # The daemon's receive buffer holds REQ's 4-byte request ID, then
        # the body: data at body offset o lies at 4 + o from a 16-byte
        # boundary. A pad key shifts it (docs/protocol.md §3).
        md = MetricsDaemon()
        try:
            c = Counting(md.daemon.url, new_tally())
            r = c.call("open", session="u", optimizer="sgd", hparams={"lr": 0.5})
            s = {"session": "u", "token": r["token"]}
            g = np.ones(50_000, np.float32)
            self.assertTrue(c.call("register", **s, params={"w": tensor(g)})["ok"])
            fams = md.scrape()
            self.assertEqual(one(fams, "optimd_unaligned_gradients_total"), 0)
            copied = 0
            for k in range(8):
                t = {"dtype": "f32", "shape": [len(g)], "pad": b"\0" * k, "data": g.tobytes()}
                body = msgpack.packb({"v": 1, "id": 7, "op": "step", **s, "grads": {"w": t}}, use_bin_type=True)
                offset = body.index(g.tobytes())
                self.assertTrue(c.raw(body, "step")["ok"])
                copied += (4 + offset) % 4 != 0
                fams = md.scrape()
                self.assertEqual(one(fams, "optimd_unaligned_gradients_total"), copied, (k, offset))
                self.assertEqual(one(fams, "optimd_unaligned_gradient_bytes_total"), copied * g.nbytes)
            self.assertEqual(copied, 6)     # 2 of 8 offsets are multiples of 4
            c.close()
        finally:
            rc, log = md.stop()
        self.assertEqual(rc, 0, log)

    def test_http_edges(self):
        md = MetricsDaemon()
        try:
            with self.assertRaises(urllib.error.HTTPError) as e:
                md.get("/other")
            self.assertEqual(e.exception.code, 404)
            req = urllib.request.Request(md.base + "/metrics", data=b"x", method="POST")
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            self.assertEqual(e.exception.code, 405)

            def raw(payload, close_write=True):
                with socket.create_connection(("127.0.0.1", md.port), timeout=10) as s:
                    s.sendall(payload)
                    if close_write:
                        s.shutdown(socket.SHUT_WR)
                    data = b""
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            return data
                        data += chunk

            self.assertTrue(raw(b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 "))
            self.assertTrue(raw(b"GET /metrics\x00 HTTP/1.1\r\n").startswith(b"HTTP/1.1 400 "))
            self.assertTrue(raw(b"GET /" + b"a" * 20000, close_write=False).startswith(b"HTTP/1.1 431 "))
            self.assertEqual(raw(b"GET /metr"), b"")   # cut short: closed without a reply
            # HTTP/1.0, bare newlines, a query string: answered, then closed
            # by the server (the read above ends only at its FIN).
            reply = raw(b"GET /metrics?x=1 HTTP/1.0\n\n", close_write=False)
            head, body = reply.split(b"\r\n\r\n", 1)
            self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"), head)
            self.assertIn(b"\r\nConnection: close", head)
            length = int(re.search(rb"\r\nContent-Length: (\d+)", head).group(1))
            self.assertEqual(length, len(body))
            parse_exposition(body.decode())

            # Clients that connect and say nothing, more of them than the
            # endpoint keeps: a scrape still gets through.
            idle = [socket.create_connection(("127.0.0.1", md.port), timeout=10) for _ in range(40)]
            try:
                self.assertIn("optimd_sessions", md.scrape())
            finally:
                for s in idle:
                    s.close()
            c = Req(md.daemon.url)
            self.assertTrue(c.call("hello")["ok"])
            c.close()
            self.assertTrue(md.daemon.alive())
            # Half a request still open when the daemon stops: it must
            # stop cleanly all the same.
            lingering = socket.create_connection(("127.0.0.1", md.port), timeout=10)
            lingering.sendall(b"GET /met")
            self.assertIn("optimd_uptime_seconds", md.scrape())
        finally:
            rc, log = md.stop()
            if "lingering" in locals():
                lingering.close()
        self.assertEqual(rc, 0, log)

    def test_refuses_to_start_without_its_endpoint(self):
        with socket.socket() as taken, tempfile.TemporaryDirectory() as tmp:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            # ":9464" would be every address: refused by the options check
            # (no --allow-remote) before the endpoint is tried.
            for where in (f"127.0.0.1:{port}", "127.0.0.1", "127.0.0.1:99999", ":9464"):
                p = subprocess.run([os.environ["OPTIMD_BIN"], "--listen", "tcp://127.0.0.1:0",
                                    "--plugin-dir", os.environ["OPTIMD_PLUGIN_DIR"],
                                    "--state-dir", os.path.join(tmp, "state"),
                                    "--ready-file", os.path.join(tmp, "ready"),
                                    "--metrics-listen", where],
                                   capture_output=True, text=True, timeout=60)
                self.assertNotEqual(p.returncode, 0, where)
                self.assertRegex(p.stderr, r"error: metrics: |reachable from other machines", where)
                self.assertFalse(os.path.exists(os.path.join(tmp, "ready")), where)


if __name__ == "__main__":
    unittest.main()
