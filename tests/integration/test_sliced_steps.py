"""Sliced steps (docs/protocol.md, step: a step sent as parts) through the
real daemon over raw msgpack: every optimizer that says it takes them
(`plugins` ... `sliced`) gives the same bits, parameters and state, as the
same step sent whole, with the parts in any order and ranges cutting
tensors anywhere; the pending step's rules (what waits, what is refused,
duplicates, gaps, overlaps); and a pending step that survives kill -9 and
SIGTERM. Run by CTest with /usr/bin/python3."""
import os
import shutil
import subprocess
import tempfile
import unittest

import msgpack
import numpy as np

from nngwire import Daemon, Req, array, tensor

SHAPES = {"a": (7, 5), "b": (13,), "c": (3, 2, 4), "d": (1,)}
STEPS = 4

# Hyperparameters that switch on slots a default session leaves off.
EXTRA_HPARAMS = {"sgd": {"lr": 0.01, "momentum": 0.9, "nesterov": True}, "adam": {"amsgrad": True},
                 "adamw": {"amsgrad": True}, "rmsprop": {"momentum": 0.5, "centered": True}}

# Not element-wise: norms over a tensor (lamb, lars), factored state
# (adafactor), matrix products (muon).
NOT_SLICED = {"lamb", "lars", "adafactor", "muon"}


def ranges_for(rng, numel):
    """The elements 0..numel-1 cut into 1 to 3 ranges at random places."""
    cuts = sorted(set(rng.integers(1, numel, size=2).tolist())) if numel > 2 else []
    edges = [0, *cuts, numel]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def make_parts(rng, grads):
    """Spreads every parameter's ranges over 3 parts; a part names a
    parameter at most once. Returns a list of {name: (offset, values)}."""
    parts = [{} for _ in range(3)]
    for name, g in grads.items():
        flat = g.reshape(-1)
        slots = rng.permutation(3)
        for k, (b, e) in enumerate(ranges_for(rng, flat.size)):
            parts[int(slots[k])][name] = (b, flat[b:e])
    return [p for p in parts if p]


def part_grads(part, whole_names=()):
    out = {}
    for name, (offset, values) in part.items():
        if name in whole_names and offset == 0 and values.size == np.prod(SHAPES[name]):
            out[name] = tensor(values.reshape(SHAPES[name]))
        else:
            out[name] = {"offset": offset, "values": tensor(values)}
    return out


class Catalog(unittest.TestCase):
    """Every optimizer: sliced == whole, bit for bit."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()
        cls.c = Req(cls.d.url)
        cls.plugins = {p["id"]: p for p in cls.c.call("plugins")["plugins"] if p["kind"] == "optimizer"}

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        # Nonzero under LeakSanitizer when a pending step's memory leaked.
        rc = cls.d.stop()
        log = cls.d.read_log()
        cls.d.cleanup()
        assert rc == 0, log[-3000:]

    def open(self, name, optimizer, hp, init):
        r = self.c.call("open", session=name, optimizer=optimizer, hparams=hp)
        self.assertTrue(r["ok"], r)
        s = {"session": name, "token": r["token"]}
        r = self.c.call("register", **s, params={n: tensor(v) for n, v in init.items()})
        self.assertTrue(r["ok"], r)
        return s

    def test_every_sliced_optimizer_matches_the_whole_step(self):
        sliced = sorted(pid for pid, p in self.plugins.items() if p["sliced"])
        self.assertGreaterEqual(len(sliced), 10, sliced)
        self.assertFalse(NOT_SLICED & set(sliced), "a non-element-wise optimizer claims sliced steps")
        for pid in sliced:
            for dt in self.plugins[pid]["dtypes"]:
                with self.subTest(optimizer=pid, dtype=dt):
                    self.check_one(pid, np.float32 if dt == "f32" else np.float64)

    def check_one(self, pid, dtype):
        rng = np.random.default_rng(abs(hash((pid, str(dtype)))) % 2**32)
        init = {n: rng.standard_normal(shape).astype(dtype) for n, shape in SHAPES.items()}
        hp = EXTRA_HPARAMS.get(pid, {})
        tag = f"{pid}-{np.dtype(dtype).name}"
        whole = self.open(f"w-{tag}", pid, hp, init)
        cut = self.open(f"s-{tag}", pid, hp, init)
        for step in range(1, STEPS + 1):
            names = list(SHAPES) if step != 3 else ["a", "c"]   # b and d skip a step
            grads = {n: rng.standard_normal(SHAPES[n]).astype(dtype) for n in names}
            r = self.c.call("step", **whole, grads={n: tensor(g) for n, g in grads.items()})
            self.assertTrue(r["ok"], r)
            parts = make_parts(rng, grads)
            order = rng.permutation(len(parts))
            for k, i in enumerate(order):
                r = self.c.call("step", **cut, seq=step, client="t", part={"index": int(i), "count": len(parts)},
                                grads=part_grads(parts[i], whole_names={"d"}))
                self.assertTrue(r["ok"], r)
                self.assertEqual(r["complete"], k == len(parts) - 1, r)
                self.assertEqual(r["parts"], k + 1)
                self.assertEqual(r["steps"], step if k == len(parts) - 1 else step - 1)
                for n, got in r["params"].items():
                    offset, values = parts[i][n]
                    self.assertEqual(got["offset"], offset)
                    self.assertEqual(array(got["values"]).size, values.size)
        a = self.c.call("state", **whole)["state"]
        b = self.c.call("state", **cut)["state"]
        self.assertEqual(a.keys(), b.keys())
        for n in a:
            self.assertEqual(a[n].keys(), b[n].keys(), n)
            for k in a[n]:
                self.assertEqual(a[n][k]["data"], b[n][k]["data"], (n, k))
        pa = self.c.call("pull", **whole)["params"]
        pb = self.c.call("pull", **cut)["params"]
        for n in SHAPES:
            self.assertEqual(pa[n]["data"], pb[n]["data"], n)
            self.assertNotEqual(pa[n]["data"], tensor(init[n])["data"], n)
        ia, ib = self.c.call("info", **whole), self.c.call("info", **cut)
        self.assertEqual(ib["steps"], STEPS)
        self.assertEqual([p["steps"] for p in ia["params"]], [p["steps"] for p in ib["params"]])

    def test_other_optimizers_refuse_parts(self):
        for pid in sorted(NOT_SLICED & set(self.plugins)):
            with self.subTest(optimizer=pid):
                self.assertFalse(self.plugins[pid]["sliced"])
                init = {"a": np.ones((4, 4), np.float32)}
                s = self.open(f"no-{pid}", pid, {}, init)
                r = self.c.call("step", **s, seq=1, part={"index": 0, "count": 1},
                                grads={"a": tensor(np.ones((4, 4), np.float32))})
                self.assertFalse(r["ok"])
                self.assertEqual(r["code"], 2, r)
                self.assertIn("element-wise", r["message"])


class PendingStep(unittest.TestCase):
    def setUp(self):
        self.d = Daemon()
        self.c = Req(self.d.url)
        r = self.c.call("open", session="p", optimizer="adamw", scheduler="step",
                        sched_hparams={"step_size": 1, "gamma": 0.5})
        self.assertTrue(r["ok"], r)
        self.s = {"session": "p", "token": r["token"]}
        self.init = {"w": np.arange(10, dtype=np.float32) / 10, "v": np.ones(3, np.float32)}
        self.assertTrue(self.c.call("register", **self.s, params={n: tensor(v) for n, v in self.init.items()})["ok"])
        self.g = {"w": np.linspace(-1, 1, 10).astype(np.float32), "v": np.full(3, 0.25, np.float32)}

    def tearDown(self):
        self.c.close()
        rc = self.d.stop()
        log = self.d.read_log()
        self.d.cleanup()
        self.assertEqual(rc, 0, log[-3000:])

    def part(self, index, count, grads, seq=1, client="a", **extra):
        return self.c.call("step", **self.s, seq=seq, client=client, part={"index": index, "count": count},
                           grads=grads, **extra)

    def rng(self, name, b, e):
        return {"offset": b, "values": tensor(self.g[name][b:e])}

    def pull(self):
        return {n: array(t) for n, t in self.c.call("pull", **self.s)["params"].items()}

    def test_pending_step_rules(self):
        r = self.part(0, 3, {"w": self.rng("w", 0, 4)})
        self.assertTrue(r["ok"], r)
        self.assertFalse(r["complete"])
        self.assertEqual((r["steps"], r["lr"], r["next_lr"]), (0, 0.001, 0.001))
        info = self.c.call("info", **self.s)
        self.assertEqual(info["pending_step"], {"client": "a", "seq": 1, "count": 3, "applied": 1})
        self.assertEqual(info["steps"], 0)
        self.assertEqual([p["steps"] for p in info["params"]], [0, 0])
        after_first = self.pull()
        self.assertFalse(np.array_equal(after_first["w"][:4], self.init["w"][:4]))
        np.testing.assert_array_equal(after_first["w"][4:], self.init["w"][4:])
        # Everything else that changes the session waits.
        for op, fields in [("step", {"grads": {"v": tensor(self.g["v"])}}),
                           ("step", {"grads": {"v": tensor(self.g["v"])}, "seq": 9, "client": "b",
                                     "part": {"index": 0, "count": 1}}),
                           ("set_hparams", {"hparams": {"lr": 0.1}}), ("observe", {"metric": 1.0}),
                           ("export", {}), ("unregister", {"names": ["v"]}),
                           ("switch", {"optimizer": "adam"})]:
            r = self.c.call(op, **self.s, **fields)
            self.assertFalse(r["ok"], (op, r))
            self.assertEqual(r["code"], 26, (op, r))
            self.assertIn("seq 1", r["message"])
        self.assertEqual(self.pull()["w"].tobytes(), after_first["w"].tobytes())
        # Overlap: refused, nothing of the part applied.
        r = self.part(1, 3, {"w": self.rng("w", 3, 6), "v": self.rng("v", 0, 3)})
        self.assertEqual(r["code"], 2, r)
        self.assertIn("earlier part", r["message"])
        np.testing.assert_array_equal(self.pull()["v"], self.init["v"])
        # Bounds, NaN, a different count.
        r = self.part(1, 3, {"w": {"offset": 8, "values": tensor(np.ones(3, np.float32))}})
        self.assertEqual(r["code"], 32, r)
        bad = self.g["w"][4:7].copy()
        bad[1] = np.nan
        r = self.part(1, 3, {"w": {"offset": 4, "values": tensor(bad)}})
        self.assertEqual(r["code"], 33, r)
        r = self.part(1, 4, {"w": self.rng("w", 4, 7)})
        self.assertEqual(r["code"], 2, r)
        self.assertEqual(self.c.call("info", **self.s)["pending_step"]["applied"], 1)
        # Part 1 lands; the same part again is a duplicate with the current values.
        r = self.part(1, 3, {"w": self.rng("w", 4, 7)})
        self.assertTrue(r["ok"], r)
        again = self.part(1, 3, {"w": self.rng("w", 4, 7)})
        self.assertTrue(again["duplicate"], again)
        self.assertEqual(again["params"]["w"]["values"]["data"], r["params"]["w"]["values"]["data"])
        self.assertEqual(self.c.call("info", **self.s)["pending_step"]["applied"], 2)
        # The last part leaves w[7:] out: refused, not counted; sent again whole, it completes.
        r = self.part(2, 3, {"v": self.rng("v", 0, 3), "w": self.rng("w", 7, 9)})
        self.assertEqual(r["code"], 2, r)
        self.assertIn("elements 9 to 9", r["message"])
        r = self.part(2, 3, {"v": self.rng("v", 0, 3), "w": self.rng("w", 7, 10)})
        self.assertTrue(r["ok"], r)
        self.assertTrue(r["complete"])
        self.assertEqual((r["steps"], r["lr"], r["next_lr"]), (1, 0.001, 0.0005))
        info = self.c.call("info", **self.s)
        self.assertNotIn("pending_step", info)
        self.assertEqual([p["steps"] for p in info["params"]], [1, 1])
        # The same as one whole step on a twin session.
        r = self.c.call("open", session="twin", optimizer="adamw", scheduler="step",
                        sched_hparams={"step_size": 1, "gamma": 0.5})
        t = {"session": "twin", "token": r["token"]}
        self.c.call("register", **t, params={n: tensor(v) for n, v in self.init.items()})
        r = self.c.call("step", **t, grads={n: tensor(g) for n, g in self.g.items()})
        for n, v in self.pull().items():
            self.assertEqual(array(r["params"][n]).tobytes(), v.tobytes(), n)
        # A retry of any part after completion: a duplicate, complete.
        r = self.part(0, 3, {"w": self.rng("w", 0, 4)})
        self.assertTrue(r["duplicate"] and r["complete"], r)
        self.assertEqual(r["steps"], 1)
        # Now a plain step is welcome again.
        self.assertTrue(self.c.call("step", **self.s, grads={"v": tensor(self.g["v"])})["ok"])

    def test_abandon_ends_the_pending_step_as_it_stands(self):
        r = self.c.call("abandon_step", **self.s, seq=1, client="a")
        self.assertEqual(r["code"], 2, r)
        self.assertIn("no pending step", r["message"])
        self.assertTrue(self.part(0, 3, {"w": self.rng("w", 0, 4)})["ok"])
        half = self.pull()
        for seq, client in ((2, "a"), (1, "b")):
            r = self.c.call("abandon_step", **self.s, seq=seq, client=client)
            self.assertEqual(r["code"], 2, r)
            self.assertIn("client 'a', seq 1", r["message"])
        r = self.c.call("abandon_step", **self.s, seq=1, client="a")
        self.assertTrue(r["ok"], r)
        self.assertEqual((r["steps"], r["parts"], r["lr"], r["next_lr"]), (1, 1, 0.001, 0.0005))
        info = self.c.call("info", **self.s, client="a")
        self.assertNotIn("pending_step", info)
        self.assertEqual(info["client_seq"], 1)
        self.assertEqual([p["steps"] for p in info["params"]], [1, 0])   # w touched, v not
        now = self.pull()
        for n in now:
            self.assertEqual(now[n].tobytes(), half[n].tobytes(), n)
        np.testing.assert_array_equal(now["w"][4:], self.init["w"][4:])
        # Its other parts are duplicates now; the next step is welcome.
        r = self.part(1, 3, {"w": self.rng("w", 4, 10)})
        self.assertTrue(r["duplicate"] and r["complete"], r)
        np.testing.assert_array_equal(self.pull()["w"][4:], self.init["w"][4:])
        self.assertTrue(self.c.call("step", **self.s, grads={"v": tensor(self.g["v"])})["ok"])

    def test_optimctl_shows_and_abandons_the_pending_step(self):
        def optimctl(command, *args):
            return subprocess.run([os.environ["OPTIMD_OPTIMCTL"], "--server", self.d.url, command, "p", *args,
                                   "--token", self.s["token"]], capture_output=True, text=True, timeout=60)
        self.assertTrue(self.part(1, 4, {"w": self.rng("w", 2, 9)}, client="w7", seq=12)["ok"])
        r = optimctl("info")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("pending_step client w7 seq 12 parts 1 of 4\n", r.stdout)
        r = optimctl("abandon-step", "12")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("BAD_REQUEST", r.stderr)
        self.assertIn("client 'w7', seq 12", r.stderr)
        r = optimctl("abandon-step", "12", "--client", "w7")
        self.assertEqual((r.returncode, r.stdout), (0, "steps 1\n"), r.stderr)
        r = optimctl("info")
        self.assertNotIn("pending_step", r.stdout)
        self.assertIn("steps 1\n", r.stdout)
        self.assertEqual(optimctl("abandon-step", "x").returncode, 2)

    def test_many_tensors_and_one_registered_while_pending(self):
        rng = np.random.default_rng(3)
        names = [f"t{i}" for i in range(300)]
        init = {n: rng.standard_normal(3).astype(np.float32) for n in names}
        grads = {n: rng.standard_normal(3).astype(np.float32) for n in names}
        late = {"late": np.full(4, 0.5, np.float32)}
        sessions = {}
        for name in ("cut", "whole"):
            r = self.c.call("open", session=name, optimizer="nadam")
            sessions[name] = {"session": name, "token": r["token"]}
            self.assertTrue(self.c.call("register", **sessions[name],
                                        params={n: tensor(v) for n, v in init.items()})["ok"])
        cut = sessions["cut"]
        # Part 0: every other tensor whole, and the first element of the rest.
        part0 = {n: tensor(grads[n]) if i % 2 else {"offset": 0, "values": tensor(grads[n][:1])}
                 for i, n in enumerate(names)}
        r = self.c.call("step", **cut, seq=1, part={"index": 0, "count": 2}, grads=part0)
        self.assertTrue(r["ok"], r)
        self.assertTrue(self.c.call("register", **cut, params={"late": tensor(late["late"])})["ok"])
        part1 = {n: {"offset": 1, "values": tensor(grads[n][1:])} for i, n in enumerate(names) if i % 2 == 0}
        part1["late"] = tensor(np.ones(4, np.float32))
        r = self.c.call("step", **cut, seq=1, part={"index": 1, "count": 2}, grads=part1)
        self.assertTrue(r["complete"], r)
        whole = sessions["whole"]
        self.c.call("register", **whole, params={"late": tensor(late["late"])})
        r = self.c.call("step", **whole, grads={**{n: tensor(g) for n, g in grads.items()},
                                                "late": tensor(np.ones(4, np.float32))})
        self.assertTrue(r["ok"], r)
        a = self.c.call("state", **cut)["state"]
        b = self.c.call("state", **whole)["state"]
        self.assertEqual(a, b)
        pa, pb = self.c.call("pull", **cut)["params"], self.c.call("pull", **whole)["params"]
        self.assertEqual(pa, pb)

    def test_part_needs_seq_and_a_plain_optimizer_setting(self):
        r = self.c.call("step", **self.s, grads={"w": self.rng("w", 4, 7)})
        self.assertEqual(r["code"], 2, r)
        self.assertIn("part", r["message"])
        # One name twice in a part's grads (a msgpack map may repeat a key).
        pk = msgpack.Packer(use_bin_type=True)
        fields = {"v": 1, "id": 1, "op": "step", **self.s, "seq": 1, "part": {"index": 0, "count": 2}}
        body = pk.pack_map_header(len(fields) + 1) + b"".join(pk.pack(k) + pk.pack(v) for k, v in fields.items())
        body += pk.pack("grads") + pk.pack_map_pairs([("w", self.rng("w", 0, 2)), ("w", self.rng("w", 2, 4))])
        r = msgpack.unpackb(self.c.roundtrip_bytes(body), raw=False)
        self.assertEqual(r["code"], 2, r)
        self.assertIn("'w' is named twice in one part", r["message"])
        self.assertNotIn("pending_step", self.c.call("info", **self.s))
        r = self.c.call("step", **self.s, part={"index": 0, "count": 1}, grads={"v": tensor(self.g["v"])})
        self.assertEqual(r["code"], 2, r)
        r = self.part(0, 1, {"v": tensor(self.g["v"])}, clip_norm={"max_norm": 1.0})
        self.assertEqual(r["code"], 2, r)
        r = self.part(2, 2, {"v": tensor(self.g["v"])})
        self.assertEqual(r["code"], 2, r)
        # clip_value is element-wise: allowed, and the same as the whole step's.
        r = self.part(0, 2, {"w": self.rng("w", 0, 5)}, clip_value=0.3)
        self.assertTrue(r["ok"], r)
        r = self.part(1, 2, {"w": self.rng("w", 5, 10), "v": tensor(self.g["v"])}, clip_value=0.3)
        self.assertTrue(r["complete"], r)
        r = self.c.call("open", session="twin", optimizer="adamw")
        t = {"session": "twin", "token": r["token"]}
        self.c.call("register", **t, params={n: tensor(v) for n, v in self.init.items()})
        r = self.c.call("step", **t, grads={n: tensor(g) for n, g in self.g.items()}, clip_value=0.3)
        for n, v in self.pull().items():
            self.assertEqual(array(r["params"][n]).tobytes(), v.tobytes(), n)


class Durable(unittest.TestCase):
    def run_case(self, durability, stop):
        state = tempfile.mkdtemp(prefix="optimd-sliced-")
        rng = np.random.default_rng(11)
        init = {"w": rng.standard_normal((6, 9)).astype(np.float32), "v": rng.standard_normal(5).astype(np.float32)}
        g = {n: rng.standard_normal(v.shape).astype(np.float32) for n, v in init.items()}
        parts = [{"w": {"offset": 0, "values": tensor(g["w"].reshape(-1)[:20])}},
                 {"w": {"offset": 20, "values": tensor(g["w"].reshape(-1)[20:])}},
                 {"v": tensor(g["v"])}]
        d = Daemon(state_dir=state)
        try:
            c = Req(d.url)
            r = c.call("open", session="d", optimizer="nadam", durability=durability)
            s = {"session": "d", "token": r["token"]}
            c.call("register", **s, params={n: tensor(v) for n, v in init.items()})
            self.assertTrue(c.call("step", **s, grads={n: tensor(x) for n, x in g.items()})["ok"])
            for i in (2, 0):
                r = c.call("step", **s, seq=5, client="k", part={"index": i, "count": 3}, grads=parts[i])
                self.assertTrue(r["ok"], r)
            c.close()
            if stop == "kill":
                d.kill()
            else:
                self.assertEqual(d.stop(), 0)
            d = Daemon(state_dir=state)
            c = Req(d.url)
            info = c.call("info", **s)
            self.assertEqual(info["pending_step"], {"client": "k", "seq": 5, "count": 3, "applied": 2})
            r = c.call("step", **s, seq=5, client="k", part={"index": 0, "count": 3}, grads=parts[0])
            self.assertTrue(r["duplicate"], r)
            r = c.call("step", **s, seq=5, client="k", part={"index": 1, "count": 3}, grads=parts[1])
            self.assertTrue(r["complete"], r)
            self.assertEqual(r["steps"], 2)
            got = {n: array(t) for n, t in c.call("pull", **s)["params"].items()}
            c.close()
        finally:
            rc = d.stop()
            log = d.read_log()
            d.cleanup()
            shutil.rmtree(state, ignore_errors=True)
        self.assertEqual(rc, 0, log[-3000:])
        ref = Daemon()
        try:
            c = Req(ref.url)
            r = c.call("open", session="d", optimizer="nadam")
            s = {"session": "d", "token": r["token"]}
            c.call("register", **s, params={n: tensor(v) for n, v in init.items()})
            c.call("step", **s, grads={n: tensor(x) for n, x in g.items()})
            r = c.call("step", **s, grads={n: tensor(x) for n, x in g.items()})
            for n in init:
                self.assertEqual(array(r["params"][n]).tobytes(), got[n].tobytes(), n)
            c.close()
        finally:
            ref.stop()
            ref.cleanup()

    def test_kill_while_pending(self):
        self.run_case("always", "kill")

    def test_sigterm_while_pending(self):
        self.run_case("interval", "term")

    def test_abandon_is_logged(self):
        state = tempfile.mkdtemp(prefix="optimd-sliced-")
        init = np.arange(12, dtype=np.float64)
        try:
            d = Daemon(state_dir=state)
            c = Req(d.url)
            s = {"session": "a", "token": c.call("open", session="a", optimizer="adam", durability="always")["token"]}
            c.call("register", **s, params={"w": tensor(init)})
            r = c.call("step", **s, seq=3, part={"index": 1, "count": 2},
                       grads={"w": {"offset": 6, "values": tensor(np.ones(6))}})
            self.assertTrue(r["ok"], r)
            self.assertTrue(c.call("abandon_step", **s, seq=3)["ok"])
            before = c.call("pull", **s)["params"]["w"]["data"]
            c.close()
            d.kill()
            d.cleanup()
            d = Daemon(state_dir=state)
            c = Req(d.url)
            info = c.call("info", **s, client="")
            self.assertNotIn("pending_step", info)
            self.assertEqual((info["steps"], info["client_seq"]), (1, 3))
            self.assertEqual(c.call("pull", **s)["params"]["w"]["data"], before)
            c.close()
            self.assertEqual(d.stop(), 0)
            d.cleanup()
        finally:
            shutil.rmtree(state, ignore_errors=True)

    def test_sigterm_while_pending_snapshots_only(self):
        # No log: the snapshot taken at shutdown holds the pending step.
        self.run_case("none", "term")


if __name__ == "__main__":
    unittest.main()
