"""The ops that move parameters between the daemons of one run, against a
real optimd over real sockets: `export` with `names`, `import` with `into`,
`unregister`. Each refusal has its stable code and changes nothing (the
session's own export is byte-identical before and after); what succeeds is
on disk before the reply (a kill -9 right after loses none of it). Run by
CTest with OPTIMD_BIN and OPTIMD_PLUGIN_DIR set."""
import unittest

import numpy as np

from nngwire import Daemon, Req, array, tensor

HP = {"lr": 0.05, "weight_decay": 0.1, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6}
SCHED = {"step_size": 2, "gamma": 0.5}
SHAPES = {"a": (3, 4), "b": (5,), "c": (2, 2), "d": ()}


def values(seed, name):
    # One generator per name: a parameter gets the same values whichever
    # others are asked for with it.
    rng = np.random.default_rng([seed, ord(name)])
    return tensor(rng.standard_normal(SHAPES[name]).astype(np.float32))


def grads(i, names):
    return {n: values(100 + i, n) for n in names}


def init(names):
    return {n: values(7, n) for n in names}


class Reshard(unittest.TestCase):
    def setUp(self):
        self.daemons = []
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close()
        failed = []
        # The ones still running stop gracefully and must exit 0: under
        # ASan that is also the leak check.
        for d in self.daemons:
            rc = d.stop() if d.alive() else 0
            if rc != 0:
                failed.append(f"optimd exited with {rc} on SIGTERM; log:\n{d.read_log()}")
        for d in self.daemons:   # after every stop: a restarted daemon uses its predecessor's state
            d.cleanup()
        if failed:
            raise AssertionError("\n".join(failed))

    def start(self, *args, **kw):
        d = Daemon(*args, **kw)
        self.daemons.append(d)
        c = Req(d.url)
        self.clients.append(c)
        return d, c

    def ok(self, reply):
        self.assertTrue(reply.get("ok"), reply)
        return reply

    def err(self, reply, name):
        self.assertFalse(reply.get("ok"), reply)
        self.assertEqual(reply["error"], name, reply)
        return reply

    def open(self, c, name, names, optimizer="adamw", hparams=HP, steps=0, **kw):
        r = self.ok(c.call("open", session=name, optimizer=optimizer, hparams=hparams, scheduler="step",
                           sched_hparams=SCHED, **kw))
        s = {"session": name, "token": r["token"]}
        if names:
            self.ok(c.call("register", **s, params=init(names)))
        for i in range(steps):
            self.ok(c.call("step", **s, grads=grads(i, names), seq=i + 1, client="w"))
        return s

    def params(self, c, s):
        return [p["name"] for p in self.ok(c.call("info", **s))["params"]]

    def test_export_names(self):
        _, c = self.start()
        s = self.open(c, "full", list(SHAPES), steps=3)
        whole = self.ok(c.call("export", **s))["snapshot"]
        part = self.ok(c.call("export", **s, names=["c", "a"]))["snapshot"]
        self.assertLess(len(part), len(whole))
        shell = self.ok(c.call("export", **s, names=[]))["snapshot"]
        # Imported as sessions of their own: only the named parameters, and
        # the session-level data as the whole export has it.
        t = self.ok(c.call("import", snapshot=part, session="part"))
        e = self.ok(c.call("import", snapshot=shell, session="shell"))
        self.assertEqual(t["steps"], 3)
        tp = {"session": "part", "token": t["token"]}
        ep = {"session": "shell", "token": e["token"]}
        self.assertEqual(self.params(c, tp), ["a", "c"])        # registration order, not request order
        self.assertEqual(self.params(c, ep), [])
        full_info, part_info = c.call("info", **s), c.call("info", **tp)
        for key in ("steps", "lr", "base_lr", "hparams", "sched_hparams", "groups"):
            if key != "groups":
                self.assertEqual(part_info[key], full_info[key], key)
        self.assertEqual(c.call("state", **tp)["state"], c.call("state", **s, names=["a", "c"])["state"])
        self.assertEqual(c.call("pull", **tp)["params"], c.call("pull", **s, names=["a", "c"])["params"])
        # The clients' sequence numbers come along.
        self.assertTrue(c.call("step", **tp, grads=grads(2, ["a"]), seq=3, client="w")["duplicate"])

        self.err(c.call("export", **s, names=["a", "nope"]), "UNKNOWN_PARAM")
        self.err(c.call("export", **s, names=["a", "a"]), "BAD_REQUEST")
        self.err(c.call("export", **s, names="a"), "BAD_REQUEST")
        self.err(c.call("export", **s, names=[1]), "BAD_REQUEST")
        self.err(c.call("export", session="full", token="0" * 32, names=["a"]), "BAD_TOKEN")
        # nil is "all", as for pull and state.
        self.assertEqual(len(self.ok(c.call("export", **s, names=None))["snapshot"]), len(whole))

    def test_import_into_adds_parameters_with_their_state(self):
        d, c = self.start()
        # The same run split over two sessions: "left" has a and b, "right"
        # has c and d; both step together. The reference has all four.
        left = self.open(c, "left", ["a", "b"])
        right = self.open(c, "right", ["c", "d"])
        ref = self.open(c, "ref", list(SHAPES))
        for i in range(3):
            self.ok(c.call("step", **left, grads=grads(i, ["a", "b"])))
            self.ok(c.call("step", **right, grads=grads(i, ["c", "d"])))
            self.ok(c.call("step", **ref, grads=grads(i, list(SHAPES))))
        blob = self.ok(c.call("export", **left, names=["b"]))["snapshot"]
        r = self.ok(c.call("import", snapshot=blob, into=True, **right))
        self.assertEqual((r["session"], r["imported"], r["steps"]), ("right", 1, 3))
        self.assertNotIn("token", r)
        self.assertEqual(self.params(c, right), ["c", "d", "b"])
        self.assertEqual(c.call("state", **right, names=["b"])["state"], c.call("state", **left, names=["b"])["state"])
        info = {p["name"]: p for p in c.call("info", **right)["params"]}
        self.assertEqual(info["b"]["steps"], 3)
        self.ok(c.call("unregister", **left, names=["b"]))
        # Training goes on as if "b" had always been on the right.
        for i in range(3, 6):
            self.ok(c.call("step", **left, grads=grads(i, ["a"])))
            got = self.ok(c.call("step", **right, grads=grads(i, ["c", "d", "b"])))
            want = self.ok(c.call("step", **ref, grads=grads(i, list(SHAPES))))
            for n in ("b", "c", "d"):
                self.assertEqual(got["params"][n]["data"], want["params"][n]["data"], f"{n} step {i}")
        # On disk before the reply: a crash now loses neither change.
        state = c.call("state", **right)["state"]
        values = c.call("pull", **right)["params"]
        d.kill()
        d2, c2 = self.start(state_dir=d.state_dir)
        self.assertEqual(self.params(c2, right), ["c", "d", "b"])
        self.assertEqual(self.params(c2, left), ["a"])
        self.assertEqual(c2.call("state", **right)["state"], state)
        self.assertEqual(c2.call("pull", **right)["params"], values)
        got = self.ok(c2.call("step", **right, grads=grads(6, ["b"])))
        want = self.ok(c2.call("step", **ref, grads=grads(6, ["b"])))
        self.assertEqual(got["params"]["b"]["data"], want["params"]["b"]["data"])

    def test_import_into_refusals_change_nothing(self):
        _, c = self.start()
        src = self.open(c, "src", ["a", "b"], steps=2)
        dst = self.open(c, "dst", ["c"], steps=2)
        good = self.ok(c.call("export", **src, names=["a"]))["snapshot"]
        before = self.ok(c.call("export", **dst))["snapshot"]

        def refused(name, snapshot, **kw):
            fields = dict(dst, into=True)
            fields.update(kw)
            r = self.err(c.call("import", snapshot=snapshot, **fields), name)
            self.assertEqual(self.ok(c.call("export", **dst))["snapshot"], before, r["message"])
            return r["message"]

        sgd = self.open(c, "sgd", ["a"], optimizer="sgd", hparams={"lr": 0.05}, steps=2)
        msg = refused("BAD_REQUEST", self.ok(c.call("export", **sgd))["snapshot"])
        self.assertIn("optimizer", msg)
        later = self.open(c, "later", ["a"], steps=3)
        msg = refused("BAD_REQUEST", self.ok(c.call("export", **later))["snapshot"])
        self.assertIn("step", msg)
        other_hp = self.open(c, "otherhp", ["a"], hparams=dict(HP, weight_decay=0.2), steps=2)
        refused("BAD_REQUEST", self.ok(c.call("export", **other_hp))["snapshot"])
        grouped = self.ok(c.call("open", session="grouped", optimizer="adamw", hparams=HP, scheduler="step",
                                 sched_hparams=SCHED, groups=[{"name": "nodecay", "hparams": {"weight_decay": 0}}]))
        g = {"session": "grouped", "token": grouped["token"]}
        self.ok(c.call("register", **g, params=init(["d"]), group="nodecay"))
        for i in range(2):
            self.ok(c.call("step", **g, grads=grads(i, ["d"])))
        msg = refused("BAD_REQUEST", self.ok(c.call("export", **g))["snapshot"])
        self.assertIn("nodecay", msg)
        # A parameter already there: nothing of the snapshot is added, not
        # even the parameters that are new.
        both = self.ok(c.call("export", **self.open(c, "both", ["b", "c"], steps=2)))["snapshot"]
        refused("PARAM_EXISTS", both)
        refused("BAD_REQUEST", b"junk" * 10)
        refused("BAD_REQUEST", good[:-3])
        refused("BAD_REQUEST", good, durability="always")
        refused("BAD_TOKEN", good, token="0" * 32)
        refused("BAD_REQUEST", good, into="yes")
        self.err(c.call("import", snapshot=good, into=True, session="nosuch", token="0" * 32), "UNKNOWN_SESSION")
        self.err(c.call("import", snapshot=good, into=True), "BAD_REQUEST")   # no session named
        # Then the good one goes in, once.
        self.ok(c.call("import", snapshot=good, into=True, **dst))
        refused_again = self.err(c.call("import", snapshot=good, into=True, **dst), "PARAM_EXISTS")
        self.assertIn("'a'", refused_again["message"])
        self.assertEqual(self.params(c, dst), ["c", "a"])
        # into: false is the plain import (a new session).
        self.ok(c.call("import", snapshot=good, into=False, session="copy"))

    def test_import_into_full_disk_adds_nothing(self):
        d, c = self.start(max_file_bytes=64 * 1024)
        dst = self.open(c, "dst", ["c"], steps=1)
        src = self.ok(c.call("open", session="src", optimizer="adamw", hparams=HP, scheduler="step",
                             sched_hparams=SCHED, durability="none"))
        src = {"session": "src", "token": src["token"]}
        big = {"big": tensor(np.ones(8192, np.float32))}         # 32 kB, and as much again per slot
        self.ok(c.call("register", **src, params=big))
        self.ok(c.call("step", **src, grads=big))
        blob = self.ok(c.call("export", **src))["snapshot"]
        before = self.ok(c.call("export", **dst))["snapshot"]
        r = self.err(c.call("import", snapshot=blob, into=True, **dst), "STORAGE")
        self.assertIn("nothing added", r["message"])
        self.assertEqual(self.ok(c.call("export", **dst))["snapshot"], before)
        self.ok(c.call("step", **dst, grads=grads(1, ["c"])))      # and it serves on
        d.kill()
        _, c2 = self.start(state_dir=d.state_dir)
        self.assertEqual(self.params(c2, dst), ["c"])

    def test_unregister(self):
        d, c = self.start()
        s = self.open(c, "s", list(SHAPES), steps=2, durability="always")
        before = self.ok(c.call("export", **s))["snapshot"]
        self.err(c.call("unregister", **s, names=["a", "nope"]), "UNKNOWN_PARAM")
        self.err(c.call("unregister", **s, names=["a", "a"]), "BAD_REQUEST")
        self.err(c.call("unregister", **s), "BAD_REQUEST")
        self.err(c.call("unregister", **s, names="a"), "BAD_REQUEST")
        self.err(c.call("unregister", session="s", token="0" * 32, names=["a"]), "BAD_TOKEN")
        self.err(c.call("unregister", session="t", token="0" * 32, names=["a"]), "UNKNOWN_SESSION")
        self.assertEqual(self.ok(c.call("export", **s))["snapshot"], before)
        self.assertEqual(self.ok(c.call("unregister", **s, names=[]))["unregistered"], 0)
        self.assertEqual(self.ok(c.call("export", **s))["snapshot"], before)

        kept = c.call("state", **s, names=["b", "d"])["state"]
        self.assertEqual(self.ok(c.call("unregister", **s, names=["c", "a"]))["unregistered"], 2)
        self.assertEqual(self.params(c, s), ["b", "d"])
        self.err(c.call("pull", **s, names=["a"]), "UNKNOWN_PARAM")
        self.err(c.call("step", **s, grads=grads(5, ["a"])), "UNKNOWN_PARAM")
        self.assertEqual(c.call("state", **s)["state"], kept)
        self.assertEqual(c.call("sessions")["sessions"][0]["params"], 2)
        # The rest trains on (logged steps on top of the new snapshot), and a
        # name can be registered again, fresh.
        ref = self.open(c, "ref", ["b", "d"])
        for i in range(2):
            self.ok(c.call("step", **ref, grads=grads(i, ["b", "d"])))
        for i in range(2, 4):
            got = self.ok(c.call("step", **s, grads=grads(i, ["b", "d"])))
            want = self.ok(c.call("step", **ref, grads=grads(i, ["b", "d"])))
            self.assertEqual(got["params"], want["params"])
        self.ok(c.call("register", **s, params=init(["a"])))
        self.assertEqual(c.call("state", **s, names=["a"])["state"], {"a": {}})
        values = c.call("pull", **s)["params"]
        d.kill()
        _, c2 = self.start(state_dir=d.state_dir)
        self.assertEqual(self.params(c2, s), ["b", "d", "a"])
        self.assertEqual(c2.call("pull", **s)["params"], values)
        self.assertEqual(c2.call("info", **s)["steps"], 4)


if __name__ == "__main__":
    unittest.main(verbosity=2)
