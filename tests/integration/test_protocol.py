"""Integration tests of the wire protocol against a real optimd over real
sockets: every kind of bad input gets its stable error code, changes nothing,
and the daemon keeps serving. Run by CTest with OPTIMD_BIN and
OPTIMD_PLUGIN_DIR set."""
import socket
import struct
import threading
import unittest

import msgpack
import numpy as np

from nngwire import Daemon, Req, array, tensor

E = dict(MALFORMED=1, BAD_REQUEST=2, UNKNOWN_OP=3, VERSION=4, TOO_LARGE=5, UNKNOWN_PLUGIN=10,
         WRONG_KIND=11, UNKNOWN_HPARAM=12, BAD_HPARAM=13, NOT_MUTABLE=14, UNKNOWN_SESSION=20,
         BAD_TOKEN=21, SESSION_EXISTS=22, LIMIT=23, UNKNOWN_PARAM=30, PARAM_EXISTS=31,
         BAD_TENSOR=32, NONFINITE=33)


class DaemonTest(unittest.TestCase):
    extra_args = ()

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(*cls.extra_args)

    @classmethod
    def tearDownClass(cls):
        rc = cls.daemon.stop()
        log = cls.daemon.read_log()
        cls.daemon.cleanup()
        if rc != 0:
            raise AssertionError(f"optimd exited with {rc} on SIGTERM; log:\n{log}")

    def setUp(self):
        self.c = Req(self.daemon.url)

    def tearDown(self):
        self.c.close()

    def ok(self, reply):
        self.assertTrue(reply.get("ok"), reply)
        return reply

    def err(self, reply, name):
        self.assertFalse(reply.get("ok"), reply)
        self.assertEqual(reply["code"], E[name], reply)
        self.assertEqual(reply["error"], name, reply)
        self.assertIsInstance(reply["message"], str)
        self.assertTrue(reply["message"])
        return reply

    def open(self, name, optimizer="sgd", **kw):
        r = self.ok(self.c.call("open", session=name, optimizer=optimizer, **kw))
        return {"session": name, "token": r["token"]}


class Envelope(DaemonTest):
    def test_hello(self):
        r = self.ok(self.c.call("hello", id=42, client="test"))
        self.assertEqual(r["id"], 42)
        self.assertEqual(r["server"], "optimd")
        self.assertEqual(r["protocol"], 1)
        self.assertEqual(r["abi"], [1, 2])

    def test_not_msgpack(self):
        for payload in (b"\xc1", b"", b"\x92\x01", b"\x81\xa1v"):
            r = msgpack.unpackb(self.c.roundtrip_bytes(payload))
            self.err(r, "MALFORMED")
            self.assertEqual(r["id"], 0)

    def test_container_counts_beyond_the_message(self):
        # A map32 claiming 2.2 billion entries in a 6-byte message (found by
        # the fuzzer): refused before any allocation, daemon unharmed.
        for payload in (b"\xdf\x83\xa1\x76\x01\xa2", b"\xdd\xff\xff\xff\xff",
                        b"\x81\xa1v\xdc\xff\xff", b"\xc6\xff\xff\xff\xff\x00",
                        b"\x91" * 5000 + b"\xc0"):
            self.err(msgpack.unpackb(self.c.roundtrip_bytes(payload)), "MALFORMED")
        self.ok(self.c.call("hello"))

    def test_trailing_bytes(self):
        payload = msgpack.packb({"v": 1, "op": "hello"}) + b"\x00"
        self.err(msgpack.unpackb(self.c.roundtrip_bytes(payload)), "MALFORMED")

    def test_not_a_map(self):
        self.err(msgpack.unpackb(self.c.roundtrip_bytes(msgpack.packb([1, 2]))), "MALFORMED")

    def test_missing_and_wrong_keys(self):
        send = lambda m: msgpack.unpackb(self.c.roundtrip_bytes(msgpack.packb(m)))
        self.err(send({"op": "hello"}), "BAD_REQUEST")
        self.err(send({"v": "1", "op": "hello"}), "BAD_REQUEST")
        self.err(send({"v": 1}), "BAD_REQUEST")
        self.err(send({"v": 1, "op": 5}), "BAD_REQUEST")
        self.err(send({"v": 1, "op": "hello", "id": -1}), "BAD_REQUEST")
        self.err(send({"v": 2, "op": "hello", "id": 9}), "VERSION")
        self.assertEqual(send({"v": 2, "op": "hello", "id": 9})["id"], 9)
        self.err(self.c.call("frobnicate"), "UNKNOWN_OP")

    def test_plugins_schema(self):
        plugins = {p["id"]: p for p in self.ok(self.c.call("plugins"))["plugins"]}
        for pid in ("sgd", "adam", "adamw"):
            self.assertEqual(plugins[pid]["kind"], "optimizer")
            keys = [h["key"] for h in plugins[pid]["hparams"]]
            self.assertIn("lr", keys)
            self.assertIn("f32", plugins[pid]["dtypes"])
        for pid in ("step", "cosine"):
            self.assertEqual(plugins[pid]["kind"], "scheduler")
        lr = next(h for h in plugins["sgd"]["hparams"] if h["key"] == "lr")
        self.assertTrue(lr["required"])
        self.assertIsNone(lr["default"])
        adam = {h["key"]: h for h in plugins["adam"]["hparams"]}
        self.assertEqual(adam["lr"]["default"], 1e-3)
        self.assertEqual(adam["amsgrad"]["type"], "bool")
        self.assertFalse(adam["amsgrad"]["mutable"])
        slots = {s["key"]: s for s in plugins["adam"]["slots"]}
        self.assertEqual(slots["max_exp_avg_sq"]["enabled_by"], "amsgrad")
        ids = [p["id"] for p in self.ok(self.c.call("plugins"))["plugins"]]
        self.assertEqual(ids, sorted(ids))


class Sessions(DaemonTest):
    def test_open_errors(self):
        self.err(self.c.call("open", session="x1", optimizer="nope", hparams={"lr": 0.1}), "UNKNOWN_PLUGIN")
        self.err(self.c.call("open", session="x1", optimizer="step"), "WRONG_KIND")
        self.err(self.c.call("open", session="x1", optimizer="sgd", hparams={"lr": 0.1}, scheduler="adam"),
                 "WRONG_KIND")
        self.err(self.c.call("open", session="x1", optimizer="sgd"), "BAD_HPARAM")   # lr is required
        self.err(self.c.call("open", session="x1", optimizer="sgd", hparams={"lr": -1.0}), "BAD_HPARAM")
        self.err(self.c.call("open", session="x1", optimizer="sgd", hparams={"lr": "big"}), "BAD_HPARAM")
        self.err(self.c.call("open", session="x1", optimizer="sgd", hparams={"lr": float("nan")}), "BAD_HPARAM")
        self.err(self.c.call("open", session="x1", optimizer="sgd", hparams={"lr": 0.1, "nesterov": 1}),
                 "BAD_HPARAM")
        self.err(self.c.call("open", session="x1", optimizer="sgd", hparams={"lr": 0.1, "nesterov": True}),
                 "BAD_HPARAM")   # nesterov needs momentum > 0
        self.err(self.c.call("open", session="x1", optimizer="sgd", hparams={"lr": 0.1, "colour": 1}),
                 "UNKNOWN_HPARAM")
        self.err(self.c.call("open", session="x1", optimizer="adam", hparams={"beta1": 1.0}), "BAD_HPARAM")
        self.err(self.c.call("open", session="x1", optimizer="adam", scheduler="step"), "BAD_HPARAM")
        self.err(self.c.call("open", session="x1", optimizer="adam", hparams=[1]), "BAD_REQUEST")
        self.err(self.c.call("open", session="bad name!", optimizer="adam"), "BAD_REQUEST")
        self.err(self.c.call("open", session="", optimizer="adam"), "BAD_REQUEST")
        self.err(self.c.call("open", optimizer="adam"), "BAD_REQUEST")
        self.err(self.c.call("attach", session="x1", token="0" * 32), "UNKNOWN_SESSION")

    def test_lifecycle_and_tokens(self):
        s = self.open("life", "adam", hparams={"lr": 0.01})
        self.assertEqual(len(s["token"]), 32)
        self.err(self.c.call("open", session="life", optimizer="sgd", hparams={"lr": 1}), "SESSION_EXISTS")
        self.err(self.c.call("info", session="life"), "BAD_TOKEN")
        self.err(self.c.call("info", session="life", token="f" * 32), "BAD_TOKEN")
        self.err(self.c.call("info", session="life", token=s["token"][:-1]), "BAD_TOKEN")
        info = self.ok(self.c.call("attach", **s))
        self.assertEqual(info["optimizer"], "adam")
        self.assertEqual(info["hparams"]["lr"], 0.01)
        self.assertIs(info["hparams"]["amsgrad"], False)
        self.assertEqual(info["steps"], 0)
        listed = {x["session"]: x for x in self.ok(self.c.call("sessions"))["sessions"]}
        self.assertEqual(listed["life"]["optimizer"], "adam")
        self.assertNotIn("token", listed["life"])
        self.err(self.c.call("close", session="life", token="0" * 32), "BAD_TOKEN")
        self.ok(self.c.call("close", **s))
        self.err(self.c.call("info", **s), "UNKNOWN_SESSION")
        self.assertNotIn("life", [x["session"] for x in self.ok(self.c.call("sessions"))["sessions"]])

    def test_register_errors_change_nothing(self):
        s = self.open("reg", hparams={"lr": 0.1})
        good = tensor(np.ones(3, np.float32))
        self.err(self.c.call("register", **s, params={"w": {"dtype": "f32", "shape": [3], "data": b"\0" * 11}}),
                 "BAD_TENSOR")
        self.err(self.c.call("register", **s, params={"w": {"dtype": "i32", "shape": [3], "data": b"\0" * 12}}),
                 "BAD_TENSOR")
        self.err(self.c.call("register", **s, params={"w": {"dtype": "f32", "shape": [-3], "data": b""}}),
                 "BAD_TENSOR")
        self.err(self.c.call("register", **s, params={"w": {"dtype": "f32", "shape": [3]}}), "BAD_TENSOR")
        self.err(self.c.call("register", **s, params={"w": [1, 2, 3]}), "BAD_TENSOR")
        self.err(self.c.call("register", **s, params={"": good}), "BAD_REQUEST")
        # one bad tensor: neither is registered
        self.err(self.c.call("register", **s, params={"a": good, "b": {"dtype": "f32", "shape": [2], "data": b""}}),
                 "BAD_TENSOR")
        self.assertEqual(self.ok(self.c.call("info", **s))["params"], [])
        self.assertEqual(self.ok(self.c.call("register", **s, params={"a": good}))["registered"], 1)
        self.err(self.c.call("register", **s, params={"a": good}), "PARAM_EXISTS")
        info = self.ok(self.c.call("info", **s))
        self.assertEqual([p["name"] for p in info["params"]], ["a"])

    def test_step_errors_change_nothing(self):
        rng = np.random.default_rng(1)
        w0 = rng.standard_normal((4, 5)).astype(np.float32)
        grads = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(4)]
        hp = {"lr": 0.05, "momentum": 0.9}
        clean = self.open("clean", hparams=hp)
        dirty = self.open("dirty", hparams=hp)
        for s in (clean, dirty):
            self.ok(self.c.call("register", **s, params={"w": tensor(w0), "b": tensor(np.zeros(2, np.float32))}))
        bad_requests = [
            ({"w": tensor(grads[0]), "nope": tensor(grads[0])}, "UNKNOWN_PARAM"),
            ({"w": tensor(grads[0][:3])}, "BAD_TENSOR"),
            ({"w": tensor(grads[0].reshape(5, 4))}, "BAD_TENSOR"),
            ({"w": tensor(grads[0].astype(np.float64))}, "BAD_TENSOR"),
            ({"w": {"dtype": "f32", "shape": [4, 5], "data": b"\0" * 79}}, "BAD_TENSOR"),
            ({"w": tensor(np.where(np.arange(20).reshape(4, 5) == 7, np.nan, grads[0]).astype(np.float32))},
             "NONFINITE"),
            ({"b": tensor(np.zeros(2, np.float32)), "w": tensor(np.full((4, 5), np.inf, np.float32))}, "NONFINITE"),
            ({"w": tensor(np.full((4, 5), -np.inf, np.float32))}, "NONFINITE"),
        ]
        for i, g in enumerate(grads):
            for bad, code in bad_requests:
                self.err(self.c.call("step", **dirty, grads=bad), code)
            self.err(self.c.call("step", **dirty, grads=[1]), "BAD_REQUEST")
            self.err(self.c.call("step", **dirty), "BAD_REQUEST")
            a = self.ok(self.c.call("step", **clean, grads={"w": tensor(g)}))
            b = self.ok(self.c.call("step", **dirty, grads={"w": tensor(g)}))
            self.assertEqual(a["steps"], i + 1)
            self.assertEqual(b["steps"], i + 1)
            self.assertEqual(a["params"]["w"]["data"], b["params"]["w"]["data"])
            self.assertEqual(list(b["params"]), ["w"])
        info = self.ok(self.c.call("info", **dirty))
        self.assertEqual({p["name"]: p["steps"] for p in info["params"]}, {"w": 4, "b": 0})
        pulled = self.ok(self.c.call("pull", **dirty))["params"]
        np.testing.assert_array_equal(array(pulled["b"]), np.zeros(2, np.float32))
        self.assertEqual(pulled["w"]["data"], a["params"]["w"]["data"])
        self.err(self.c.call("pull", **dirty, names=["w", "zz"]), "UNKNOWN_PARAM")
        self.err(self.c.call("pull", **dirty, names=["w", "w"]), "BAD_REQUEST")
        self.assertEqual(self.ok(self.c.call("pull", **dirty, names=[]))["params"], {})
        self.assertEqual(list(self.ok(self.c.call("pull", **dirty, names=["b"]))["params"]), ["b"])

    def test_step_reply_carries_each_updated_parameter(self):
        # Large (streaming copies, a reused reply buffer), 2-D, f64 and tiny
        # parameters in one session; each reply must hold exactly the
        # parameters its step named, as updated (SGD with lr 0.5: one exact
        # rounding, p - 0.5 g), over several steps so that later replies
        # reuse earlier buffers, and a retried step must answer with the
        # parameters as they stand without stepping again.
        rng = np.random.default_rng(7)
        p = {"big": rng.standard_normal(300_001).astype(np.float32),
             "mat": rng.standard_normal((33, 17)).astype(np.float32),
             "dbl": rng.standard_normal(1000),
             "one": np.array([2.5], np.float32)}
        s = self.open("reply", hparams={"lr": 0.5})
        self.ok(self.c.call("register", **s, params={k: tensor(v) for k, v in p.items()}))
        plans = [["big", "mat", "dbl", "one"], ["dbl", "big"], ["one"], ["mat", "big", "one", "dbl"]]
        for i, names in enumerate(plans):
            g = {k: (rng.standard_normal(p[k].shape) * 3).astype(p[k].dtype) for k in names}
            r = self.ok(self.c.call("step", **s, grads={k: tensor(g[k]) for k in names}, seq=i + 1, client="c"))
            for k in names:
                p[k] = (p[k] - p[k].dtype.type(0.5) * g[k]).astype(p[k].dtype)
            self.assertEqual(list(r["params"]), names)
            for k in names:
                got = array(r["params"][k])
                self.assertEqual(got.dtype, p[k].dtype)
                self.assertEqual(got.shape, p[k].shape)
                np.testing.assert_array_equal(got, p[k], err_msg=f"step {i + 1}, '{k}'")
            self.assertEqual((r["steps"], r["lr"], r["duplicate"]), (i + 1, 0.5, False))
            again = self.ok(self.c.call("step", **s, grads={k: tensor(g[k] + 1) for k in names},
                                        seq=i + 1, client="c"))
            self.assertTrue(again["duplicate"])
            self.assertEqual(again["steps"], i + 1)
            for k in names:
                np.testing.assert_array_equal(array(again["params"][k]), p[k], err_msg=f"retry {i + 1}, '{k}'")
        pulled = self.ok(self.c.call("pull", **s))["params"]
        for k in p:
            np.testing.assert_array_equal(array(pulled[k]), p[k])

    def test_step_reply_written_over_the_request(self):
        # A dense step's reply can be the request's own message: each
        # parameter over its gradient, the msgpack between the tensors
        # rewritten to fill each gap exactly (slack of 0 to 5 bytes by
        # longer encodings, 6 or more by a pad key), the envelope and
        # counters in front. The requests here are built by hand so that
        # every slack comes up; the reply must decode to the right values
        # with its counters before `params` (the in-place layout; the other
        # has them after) and a pad wherever the slack was 6 or more.
        rng = np.random.default_rng(11)
        shapes = [(70_000,), (300, 7), (5,), (40_000,), (3, 2, 2), (1,), (17,), (20_000,)]
        names = [f"p{i}" for i in range(len(shapes))]
        p = {n: rng.standard_normal(sh).astype(np.float32 if i % 3 else np.float64)
             for i, (n, sh) in enumerate(zip(names, shapes))}
        s = self.open("over" * 10, hparams={"lr": 0.5})       # a long name: room in front
        self.ok(self.c.call("register", **s, params={k: tensor(v) for k, v in p.items()}))

        def entry(name, a, slack):
            """One gradient's key and tensor map, `slack` bytes longer than
            the shortest encoding."""
            extra = {1: b"", 2: b"\xa0\xc0", 3: b"\xa1x\xc0", 4: b"\xa2xy\xc0", 5: b"\xa3xyz\xc0"}
            dt = {np.dtype(np.float32): b"f32", np.dtype(np.float64): b"f64"}[a.dtype]
            head = msgpack.packb(name)
            if slack == 0 or slack == 1:
                head += b"\x83"
            elif slack <= 5:
                head += b"\x84" + extra[slack]
            else:
                head += b"\x84" + msgpack.packb("pad") + msgpack.packb(b"\0" * (slack - 6 - (1 if slack - 6 >= 256 else 0)),
                                                                      use_bin_type=True)
            head += msgpack.packb("dtype") + (b"\xd9\x03" + dt if slack == 1 else msgpack.packb(dt.decode()))
            head += msgpack.packb("shape") + msgpack.packb(list(a.shape))
            head += msgpack.packb("data") + msgpack.packb(a.tobytes(), use_bin_type=True)
            return head

        slacks = [0, 1, 2, 3, 4, 5, 6, 7, 21, 300]
        for step in range(len(slacks)):
            g = {k: (rng.standard_normal(v.shape) * 2).astype(v.dtype) for k, v in p.items()}
            order = names[step % len(names):] + names[:step % len(names)]
            grads = b"".join(entry(k, g[k], slacks[(step + i) % len(slacks)]) for i, k in enumerate(order))
            front = msgpack.packb({"v": 1, "id": 9, "op": "step", **s})
            # The envelope's map gets three more keys: grads, seq, client.
            body = bytes([front[0] + 3]) + front[1:] + msgpack.packb("grads") + bytes([0x80 | len(order)]) + grads
            body += msgpack.packb("seq") + msgpack.packb(step + 1) + msgpack.packb("client") + msgpack.packb("c")
            raw = self.c.roundtrip_bytes(body)
            keys = [k for k, _ in msgpack.unpackb(raw, object_pairs_hook=list, raw=False)]
            self.assertEqual(keys[:4], ["v", "id", "ok", "steps"], msgpack.unpackb(raw, raw=False))
            self.assertEqual(keys[-1], "params", keys)
            r = msgpack.unpackb(raw, raw=False)
            self.assertTrue(r["ok"], r)
            self.assertEqual((r["id"], r["steps"], r["duplicate"]), (9, step + 1, False))
            self.assertEqual(list(r["params"]), order)
            for i, k in enumerate(order):
                p[k] = (p[k] - p[k].dtype.type(0.5) * g[k]).astype(p[k].dtype)
                np.testing.assert_array_equal(array(r["params"][k]), p[k], err_msg=f"step {step + 1} '{k}'")
                if i > 0:
                    self.assertEqual("pad" in r["params"][k], slacks[(step + i) % len(slacks)] >= 6)
            again = msgpack.unpackb(self.c.roundtrip_bytes(body), raw=False)   # the same seq: a duplicate
            self.assertTrue(again["duplicate"])
            for k in order:
                np.testing.assert_array_equal(array(again["params"][k]), p[k])
        pulled = self.ok(self.c.call("pull", **s))["params"]
        for k in p:
            np.testing.assert_array_equal(array(pulled[k]), p[k])

    def test_state_returns_every_allocated_slot(self):
        s = self.open("slots", "adam", hparams={"lr": 0.1, "amsgrad": True})
        self.ok(self.c.call("register", **s, params={"w": tensor(np.zeros(3, np.float32)),
                                                     "idle": tensor(np.zeros(2))}))
        g = np.array([1.0, -2.0, 0.5], np.float32)
        self.ok(self.c.call("step", **s, grads={"w": tensor(g)}))
        st = self.ok(self.c.call("state", **s))["state"]
        self.assertEqual(st["idle"], {})
        self.assertEqual(set(st["w"]), {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"})
        # After one step from zero state: m = (1 - beta1) g, v = (1 - beta2) g^2, in fp32 as torch.
        np.testing.assert_array_equal(array(st["w"]["exp_avg"]), np.float32(0.1) * g)
        np.testing.assert_array_equal(array(st["w"]["exp_avg_sq"]), (np.float32(1 - 0.999) * g) * g)
        np.testing.assert_array_equal(array(st["w"]["max_exp_avg_sq"]), array(st["w"]["exp_avg_sq"]))
        self.assertEqual(list(self.ok(self.c.call("state", **s, names=["w"]))["state"]), ["w"])
        self.err(self.c.call("state", **s, names=["nope"]), "UNKNOWN_PARAM")
        plain = self.open("slots2", "adam")
        self.ok(self.c.call("register", **plain, params={"w": tensor(np.zeros(3, np.float32))}))
        self.ok(self.c.call("step", **plain, grads={"w": tensor(g)}))
        self.assertNotIn("max_exp_avg_sq", self.ok(self.c.call("state", **plain))["state"]["w"])

    def test_step_without_return_and_empty(self):
        s = self.open("noret", hparams={"lr": 0.5})
        self.ok(self.c.call("register", **s, params={"w": tensor(np.ones(2, np.float32))}))
        r = self.ok(self.c.call("step", **s, grads={"w": tensor(np.ones(2, np.float32))}, **{"return": False}))
        self.assertNotIn("params", r)
        self.assertEqual(r["lr"], 0.5)
        r = self.ok(self.c.call("step", **s, grads={}))
        self.assertEqual(r["steps"], 2)
        self.assertEqual(r["params"], {})
        np.testing.assert_array_equal(array(self.ok(self.c.call("pull", **s))["params"]["w"]),
                                      np.full(2, 0.5, np.float32))

    def test_set_hparams(self):
        s = self.open("hp", "adam", hparams={"lr": 0.01, "amsgrad": True})
        self.err(self.c.call("set_hparams", **s, hparams={"amsgrad": False}), "NOT_MUTABLE")
        self.err(self.c.call("set_hparams", **s, hparams={"lr": 0.2, "beta1": 2.0}), "BAD_HPARAM")
        self.err(self.c.call("set_hparams", **s, hparams={"zzz": 1}), "UNKNOWN_HPARAM")
        h = self.ok(self.c.call("hparams", **s))
        self.assertEqual(h["hparams"]["lr"], 0.01)   # the failed change left lr alone
        self.assertEqual(h["lr"], 0.01)
        h = self.ok(self.c.call("set_hparams", **s, hparams={"lr": 0.2, "weight_decay": 0.5}))
        self.assertEqual(h["hparams"]["lr"], 0.2)
        self.assertEqual(h["hparams"]["weight_decay"], 0.5)
        self.ok(self.c.call("register", **s, params={"w": tensor(np.ones(2, np.float32))}))
        r = self.ok(self.c.call("step", **s, grads={"w": tensor(np.ones(2, np.float32))}))
        self.assertEqual(r["lr"], 0.2)


class Scheduler(DaemonTest):
    def test_step_lr_sequence(self):
        s = self.open("sched", hparams={"lr": 1.0}, scheduler="step", sched_hparams={"step_size": 2, "gamma": 0.5})
        self.ok(self.c.call("register", **s, params={"w": tensor(np.ones(1, np.float32))}))
        lrs = [self.ok(self.c.call("step", **s, grads={"w": tensor(np.ones(1, np.float32))}))["lr"]
               for _ in range(6)]
        self.assertEqual(lrs, [1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
        info = self.ok(self.c.call("info", **s))
        self.assertEqual(info["scheduler"], "step")
        self.assertEqual(info["lr"], 0.125)
        self.assertEqual(info["sched_hparams"], {"step_size": 2, "gamma": 0.5})
        self.err(self.c.call("open", session="s2", optimizer="sgd", hparams={"lr": 1.0}, scheduler="step"),
                 "BAD_HPARAM")   # step_size is required


class Limits(DaemonTest):
    extra_args = ("--max-message", "65536", "--max-sessions", "3")

    def test_too_large_is_refused_and_daemon_serves_on(self):
        s = self.open("big", hparams={"lr": 0.1})
        self.ok(self.c.call("register", **s, params={"w": tensor(np.ones(4, np.float32))}))
        big = {"w": tensor(np.ones(30000, np.float32))}   # ~120 KB: over the limit, under twice it
        r = self.err(self.c.call("register", **s, params=big), "TOO_LARGE")
        self.assertIn("65536", r["message"])
        # Over twice the limit, the transport drops the connection as soon as
        # the length prefix arrives, without reading (or buffering) the body.
        # A raw socket, because an NNG REQ client would just wait for a reply.
        host, port = self.daemon.url[len("tcp://"):].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"\x00SP\x00\x00\x30\x00\x00")
            self.assertEqual(sock.recv(8, socket.MSG_WAITALL), b"\x00SP\x00\x00\x31\x00\x00")
            sock.sendall(struct.pack(">Q", 800000) + struct.pack(">I", 0x80000001) + b"\x85" * 4096)
            try:
                dropped = sock.recv(1) == b""
            except ConnectionResetError:
                dropped = True
            except socket.timeout:
                dropped = False
            self.assertTrue(dropped, "the daemon kept a connection announcing 800 kB")
        self.assertTrue(self.daemon.alive())
        self.ok(self.c.call("hello"))
        self.assertEqual([p["name"] for p in self.ok(self.c.call("info", **s))["params"]], ["w"])

    def test_session_limit(self):
        names = [f"lim{i}" for i in range(3)]
        opened = []
        for n in names:
            r = self.c.call("open", session=n, optimizer="adam")
            if r["ok"]:
                opened.append({"session": n, "token": r["token"]})
        r = self.c.call("open", session="one-too-many", optimizer="adam")
        self.err(r, "LIMIT")
        for s in opened:
            self.ok(self.c.call("close", **s))


class Disconnects(DaemonTest):
    def raw_req_connection(self):
        host, port = self.daemon.url[len("tcp://"):].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"\x00SP\x00\x00\x30\x00\x00")          # SP header, protocol req0 (0x30)
        self.assertEqual(sock.recv(8), b"\x00SP\x00\x00\x31\x00\x00")   # the daemon is rep0 (0x31)
        return sock

    def test_client_vanishes_mid_message(self):
        for _ in range(5):
            sock = self.raw_req_connection()
            body = struct.pack(">I", 0x80000001) + msgpack.packb({"v": 1, "op": "hello"})
            sock.sendall(struct.pack(">Q", 100000) + body[:7])   # announce 100 kB, send 7 bytes
            sock.close()
        self.assertTrue(self.daemon.alive())
        self.ok(self.c.call("hello"))

    def test_client_vanishes_before_reply(self):
        s = self.open("gone", hparams={"lr": 0.1})
        self.ok(self.c.call("register", **s, params={"w": tensor(np.ones(1 << 20, np.float32))}))
        for _ in range(3):
            sock = self.raw_req_connection()
            body = struct.pack(">I", 0x80000001) + msgpack.packb(
                {"v": 1, "op": "step", **s, "grads": {"w": tensor(np.ones(1 << 20, np.float32))}},
                use_bin_type=True)
            sock.sendall(struct.pack(">Q", len(body)) + body)
            sock.close()
        # The abandoned steps still apply (each was received whole); the
        # session stays consistent and serves its owner.
        info = self.ok(self.c.call("info", **s))
        self.assertEqual(info["params"][0]["steps"], info["steps"])
        self.assertTrue(self.daemon.alive())

    def test_raw_message_with_correct_framing(self):
        sock = self.raw_req_connection()
        body = struct.pack(">I", 0x80000007) + msgpack.packb({"v": 1, "op": "hello", "id": 3})
        sock.sendall(struct.pack(">Q", len(body)) + body)
        head = sock.recv(8, socket.MSG_WAITALL)
        n = struct.unpack(">Q", head)[0]
        reply = b""
        while len(reply) < n:
            reply += sock.recv(n - len(reply))
        sock.close()
        self.assertEqual(reply[:4], struct.pack(">I", 0x80000007))
        self.assertEqual(msgpack.unpackb(reply[4:])["id"], 3)


class Concurrency(DaemonTest):
    def test_many_clients_many_sessions(self):
        """16 clients on 4 sessions step at once; each session's final state
        must equal a serial replay of its own gradients (no cross-talk)."""
        n_sessions, per_session, steps = 4, 4, 25
        sessions = []
        for i in range(n_sessions):
            s = self.open(f"conc{i}", "adam", hparams={"lr": 0.01 * (i + 1)})
            self.ok(self.c.call("register", **s, params={"w": tensor(np.zeros(1000, np.float32))}))
            sessions.append(s)
        errors = []

        def worker(k):
            try:
                c = Req(self.daemon.url)
                s = sessions[k % n_sessions]
                g = np.full(1000, float(k % n_sessions + 1), np.float32)
                for _ in range(steps):
                    r = c.call("step", **s, grads={"w": tensor(g)}, **{"return": False})
                    if not r["ok"]:
                        errors.append(r)
                c.close()
            except Exception as e:   # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_sessions * per_session)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        for i, s in enumerate(sessions):
            ref = self.open(f"ref{i}", "adam", hparams={"lr": 0.01 * (i + 1)})
            self.ok(self.c.call("register", **ref, params={"w": tensor(np.zeros(1000, np.float32))}))
            g = tensor(np.full(1000, float(i + 1), np.float32))
            for _ in range(per_session * steps):
                last = self.ok(self.c.call("step", **ref, grads={"w": g}))
            got = self.ok(self.c.call("pull", **s))["params"]["w"]["data"]
            self.assertEqual(got, last["params"]["w"]["data"], f"session {i} differs from its serial replay")
            self.assertEqual(self.ok(self.c.call("info", **s))["steps"], per_session * steps)


if __name__ == "__main__":
    unittest.main(verbosity=2)
