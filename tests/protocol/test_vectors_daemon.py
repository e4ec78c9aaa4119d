"""The conformance vectors against the real daemon, so that they say what it
speaks: vectors.json is what make_vectors.py writes, every request vector
is understood by the daemon (sent with a live session's token), and every
success reply vector has the keys, and the value types, of the daemon's own
reply to that op. Run by CTest with /usr/bin/python3."""
import json
import os
import re
import subprocess
import sys
import unittest

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from nngwire import Daemon, Req  # noqa: E402

with open(os.path.join(HERE, "vectors.json")) as f:
    VECTORS = json.load(f)


def kind(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, (bytes, bytearray)):
        return "bin"
    if isinstance(v, dict):
        return "map"
    if isinstance(v, (list, tuple)):
        return "array"
    if v is None:
        return "nil"
    return "str"


NAMED = ("params", "lrs", "next_lrs", "grad_norms", "state", "hparams", "sched_hparams")


def shape_mismatch(want, got, where):
    """Why `want` (a vector's value) lacks the structure of `got` (the
    daemon's), or None: maps with the same keys (maps keyed by names --
    params, lrs, hparams -- only for the names both have), values of the
    same kind, each array element like some element of the daemon's."""
    if kind(want) == "nil" or kind(got) == "nil":
        return None   # a nil scheduler, default or enabled_by stands for a value too
    if kind(want) != kind(got):
        return "%s: %s in the vector, %s from the daemon" % (where, kind(want), kind(got))
    if isinstance(want, dict):
        parts = where.split(".")
        named = parts[-1] in NAMED or (len(parts) > 1 and parts[-2] == "state")
        if not named and sorted(want) != sorted(got):
            return "%s: keys %s in the vector, %s from the daemon" % (where, sorted(want), sorted(got))
        for k, v in want.items():
            if k in got:
                why = shape_mismatch(v, got[k], where + "." + k)
            elif named and got and where.split(".")[-1] in ("params", "state"):
                why = shape_mismatch(v, next(iter(got.values())), where + ".*")
            else:
                why = None
            if why:
                return why
    elif isinstance(want, list) and got:
        for i, v in enumerate(want):
            whys = [shape_mismatch(v, g, "%s[%d]" % (where, i)) for g in got]
            if all(whys):
                return whys[0]
    return None


def same_shape(test, want, got, where):
    why = shape_mismatch(want, got, where)
    test.assertIsNone(why, why)


class Vectors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon("--admin-token", "admin-secret")
        cls.c = Req(cls.daemon.url)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        rc = cls.daemon.stop()
        cls.daemon.cleanup()
        assert rc == 0, rc

    def send(self, body):
        return msgpack.unpackb(self.c.roundtrip_bytes(msgpack.packb(body, use_bin_type=True)), raw=False)

    def test_file_is_what_the_generator_writes(self):
        out = subprocess.run([sys.executable, os.path.join(HERE, "make_vectors.py")], check=True,
                             capture_output=True, text=True).stdout
        self.assertEqual(json.loads(out), VECTORS, "run make_vectors.py > vectors.json")

    def live_session(self, name, register=True):
        """run1's shape: adamw with groups no_decay and head (plateau), and
        the parameters the vectors name."""
        opener = next(v for v in VECTORS["requests"] if v["name"] == "open_groups")
        body = msgpack.unpackb(bytes.fromhex(opener["msgpack"]), raw=False)
        body["session"] = name
        r = self.send(body)
        self.assertTrue(r["ok"], r)
        token = r["token"]
        if not register:
            return token
        reg = next(v for v in VECTORS["requests"] if v["name"] == "register")
        body = msgpack.unpackb(bytes.fromhex(reg["msgpack"]), raw=False)
        body.update(session=name, token=token)
        self.assertTrue(self.send(body)["ok"])
        return token

    def test_every_request_vector_is_understood(self):
        for v in VECTORS["requests"]:
            if v["name"] == "shutdown":
                continue    # it would stop the daemon the others need; tests/integration/test_config.py sends it
            with self.subTest(v["name"]):
                body = msgpack.unpackb(bytes.fromhex(v["msgpack"]), raw=False)
                name = "vec-" + v["name"]
                if "token" in body:
                    body["token"] = self.live_session(name, register=v["name"] != "register")
                elif body.get("op") == "drop":
                    self.live_session(name)
                if "session" in body:
                    body["session"] = name
                r = self.send(body)
                if v["name"] == "load":
                    # No such file here: read, and refused for what it names.
                    self.assertEqual(r.get("error"), "PLUGIN", r)
                    self.assertIn(body["path"], r["message"])
                    continue
                if v["name"] == "import":
                    # A junk snapshot: read and refused for what it holds.
                    self.assertEqual(r.get("error"), "BAD_REQUEST", r)
                    self.assertIn("snapshot", r["message"])
                    continue
                self.assertTrue(r.get("ok"), (v["name"], r))
                self.assertEqual(r["id"], body["id"])

    def live_replies(self):
        """The daemon's own reply to each op, in a session like the vectors'."""
        token = self.live_session("live")
        s = {"session": "live", "token": token}
        call = lambda op, **kw: self.send({"v": 1, "id": 7, "op": op, **kw})
        w = {"w": {"dtype": "f32", "shape": [2], "data": b"\0" * 8}}
        # A session of one group, as most vectors have it.
        r = call("open", session="plain", optimizer="adam", hparams={"lr": 0.1})
        p = {"session": "plain", "token": r["token"]}
        self.assertTrue(call("register", **p, params=w)["ok"])
        out = {
            "hello": call("hello"),
            "plugins": call("plugins"),
            "info": call("info", **s, client="w0"),
            "hparams": call("hparams", **s),
            "state": None,
            "step_with_params": call("step", **p, grads=w),
            "step_no_return": call("step", **p, grads=w, **{"return": False}),
            "step_groups": call("step", **s, grads=w, clip_norm={"max_norm": 1.0}),
            "step_group_norms": call("step", **s, grads=w, **{"return": False},
                                     clip_norm={"max_norm": 1.0, "per_group": True}),
            "observe": call("observe", **s, metric=1.0),
            "pull": call("pull", **s),
            "pull_nothing": call("pull", **s, names=[]),
            "register": call("register", **s, params={"extra": w["w"]}),
            "sessions": call("sessions"),
            "export": call("export", **s),
        }
        out["state"] = call("state", **s)
        out["step_duplicate"] = call("step", **p, grads=w, seq=1, client="c")
        out["step_duplicate"] = call("step", **p, grads=w, seq=1, client="c")
        out["import"] = call("import", snapshot=out["export"]["snapshot"], session="imported")
        out["open"] = call("open", session="fresh", optimizer="sgd", hparams={"lr": 0.5})
        out["open_existing"] = out["open"]
        out["reload"] = call("reload", admin_token="admin-secret")
        sw = call("open", session="sw", optimizer="sgd", hparams={"lr": 0.1, "momentum": 0.9})
        t = {"session": "sw", "token": sw["token"]}
        call("register", **t, params=w)
        call("step", **t, grads=w)
        out["switch"] = call("switch", **t, optimizer="rmsprop")
        out["drop"] = call("drop", session="sw", admin_token="admin-secret")
        seq = next(v for v in VECTORS["requests"] if v["name"] == "open_lookahead_sequential")
        body = msgpack.unpackb(bytes.fromhex(seq["msgpack"]), raw=False)
        body["session"] = "seq"
        opened = self.send(body)
        out["info_lookahead_sequential"] = call("info", session="seq", token=opened["token"])
        out["close"] = call("close", session="fresh", token=out["open"]["token"])
        return out

    def test_success_replies_have_the_daemons_shape(self):
        live = self.live_replies()
        for v in VECTORS["replies"]:
            if "result" not in v["expect"] or v["name"] not in live:
                continue
            with self.subTest(v["name"]):
                got = live[v["name"]]
                self.assertTrue(got["ok"], got)
                want = msgpack.unpackb(bytes.fromhex(v["msgpack"]), raw=False)
                same_shape(self, want, got, v["name"])

    def test_error_vectors_use_the_stable_codes(self):
        with open(os.path.join(HERE, "..", "..", "sdk", "include", "optimd", "protocol.h")) as f:
            header = f.read()
        for v in VECTORS["replies"]:
            e = v["expect"]
            if e.get("ok") is False:
                self.assertRegex(header, r"OPTIMD_E_%s = %d\b" % (e["error"], e["code"]), v["name"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
