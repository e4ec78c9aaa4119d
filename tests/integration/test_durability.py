"""Sessions survive a restart of the daemon: snapshots in the state
directory, written on a timer and at a graceful stop, read back at start;
a corrupt latest snapshot falls back to the previous one. Real daemons,
real sockets, real files."""
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import threading
import time
import unittest

import numpy as np

from nngwire import Daemon, NngError, Req, array, tensor


def read_safetensors(path):
    """(header, {name: array}) parsed by hand from the documented layout."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        b, e = entry["data_offsets"]
        dt = {"F32": "<f4", "F64": "<f8"}[entry["dtype"]]
        tensors[name] = np.frombuffer(data[b:e], dtype=dt).reshape(entry["shape"])
    return header, tensors


def snapshot_steps(path):
    try:
        header, _ = read_safetensors(path)
        return json.loads(header["__metadata__"]["optimd"])["steps"]
    except (OSError, ValueError, KeyError, struct.error):
        return None


def wait_for_snapshot(path, steps, timeout=10):
    """Waits until the timer has written a snapshot holding `steps` steps."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if snapshot_steps(path) == steps:
            return True
        time.sleep(0.05)
    return False


class Restart(unittest.TestCase):
    def setUp(self):
        self.state = tempfile.mkdtemp(prefix="optimd-state-")
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            if d.alive():
                d.stop()
            d.cleanup()
        shutil.rmtree(self.state, ignore_errors=True)

    def start(self, *args):
        d = Daemon(*args, state_dir=self.state)
        self.daemons.append(d)
        return d

    def stop(self, d):
        rc = d.stop()
        self.assertEqual(rc, 0, d.read_log())
        return d.read_log()

    def grads(self, i):
        rng = np.random.default_rng(100 + i)
        return {"w": tensor(rng.standard_normal((3, 5)).astype(np.float32)),
                "v": tensor(rng.standard_normal(7))}

    def setup_session(self, c, name):
        r = c.call("open", session=name, optimizer="adam", hparams={"lr": 0.01, "amsgrad": True},
                   scheduler="step", sched_hparams={"step_size": 3, "gamma": 0.5})
        self.assertTrue(r["ok"], r)
        s = {"session": name, "token": r["token"]}
        rng = np.random.default_rng(7)
        r = c.call("register", **s, params={"w": tensor(rng.standard_normal((3, 5)).astype(np.float32)),
                                            "v": tensor(rng.standard_normal(7)),
                                            "idle": tensor(np.ones(4, np.float32))})
        self.assertTrue(r["ok"], r)
        return s

    def test_graceful_restart_continues_bit_for_bit(self):
        # Reference: 10 uninterrupted steps in a throw-away daemon.
        ref_daemon = Daemon()
        self.daemons.append(ref_daemon)
        rc = Req(ref_daemon.url)
        ref = self.setup_session(rc, "ref")
        for i in range(10):
            ref_reply = rc.call("step", **ref, grads=self.grads(i))
        ref_info = rc.call("info", **ref)
        rc.close()

        d = self.start()
        c = Req(d.url)
        s = self.setup_session(c, "run")
        for i in range(4):
            c.call("step", **s, grads=self.grads(i))
        before = c.call("info", **s)
        c.close()
        log = self.stop(d)
        self.assertNotIn("error", log)

        d = self.start()
        c = Req(d.url)
        after = c.call("attach", **s)
        self.assertTrue(after["ok"], after)
        for key in ("steps", "lr", "base_lr", "hparams", "sched_hparams", "params", "optimizer", "scheduler"):
            self.assertEqual(after[key], before[key], key)
        self.assertFalse(c.call("info", session="run", token="0" * 32)["ok"])
        for i in range(4, 10):
            reply = c.call("step", **s, grads=self.grads(i))
            self.assertTrue(reply["ok"], reply)
        for name in ("w", "v"):
            self.assertEqual(reply["params"][name]["data"], ref_reply["params"][name]["data"], name)
        info = c.call("info", **s)
        self.assertEqual(info["lr"], ref_info["lr"])
        self.assertEqual(info["params"], ref_info["params"])
        pulled = c.call("pull", **s, names=["idle"])["params"]["idle"]
        np.testing.assert_array_equal(array(pulled), np.ones(4, np.float32))
        c.close()
        self.stop(d)

    def test_snapshot_is_safetensors_with_every_state_slot(self):
        d = self.start()
        c = Req(d.url)
        s = self.setup_session(c, "layout")
        for i in range(2):
            c.call("step", **s, grads=self.grads(i))
        pulled = c.call("pull", **s)["params"]
        c.close()
        self.stop(d)
        header, tensors = read_safetensors(os.path.join(self.state, "sessions", "layout", "snapshot.safetensors"))
        for name in ("w", "v", "idle"):
            np.testing.assert_array_equal(tensors["param/" + name], array(pulled[name]))
        for slot in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            self.assertEqual(tensors["state/w/" + slot].shape, (3, 5))
            self.assertEqual(tensors["state/v/" + slot].dtype, np.float64)
        self.assertNotIn("state/idle/exp_avg", tensors)   # never stepped: no state yet
        self.assertTrue(np.any(tensors["state/w/exp_avg_sq"] > 0))
        manifest = json.loads(header["__metadata__"]["optimd"])
        self.assertEqual(manifest["optimizer"], "adam")
        self.assertEqual(manifest["steps"], 2)
        self.assertEqual(manifest["token"], s["token"])

    def test_corrupt_latest_falls_back_to_previous(self):
        d = self.start("--snapshot-interval", "1")
        c = Req(d.url)
        s = self.setup_session(c, "fallback")
        sdir = os.path.join(self.state, "sessions", "fallback")
        c.call("step", **s, grads=self.grads(0))
        self.assertTrue(wait_for_snapshot(os.path.join(sdir, "snapshot.safetensors"), steps=1))
        first = os.stat(os.path.join(sdir, "snapshot.safetensors")).st_mtime_ns
        c.call("step", **s, grads=self.grads(1))
        c.close()
        self.stop(d)   # saves the second state; the first becomes the previous
        self.assertNotEqual(os.stat(os.path.join(sdir, "snapshot.safetensors")).st_mtime_ns, first)
        header, _ = read_safetensors(os.path.join(sdir, "snapshot.previous.safetensors"))
        self.assertEqual(json.loads(header["__metadata__"]["optimd"])["steps"], 1)

        latest = os.path.join(sdir, "snapshot.safetensors")
        with open(latest, "r+b") as f:       # a torn write: cut it in half
            f.truncate(os.path.getsize(latest) // 2)
        d = self.start()
        c = Req(d.url)
        info = c.call("info", **s)
        self.assertTrue(info["ok"], info)
        self.assertEqual(info["steps"], 1)
        self.assertIn("previous", d.read_log())
        c.close()
        self.stop(d)

        for name in ("snapshot.safetensors", "snapshot.previous.safetensors"):
            with open(os.path.join(sdir, name), "wb") as f:
                f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
        d = self.start()
        c = Req(d.url)
        self.assertEqual(c.call("info", **s)["code"], 20)     # UNKNOWN_SESSION: not loaded
        self.assertTrue(c.call("hello")["ok"])                 # and the daemon serves on
        self.assertIn("no usable snapshot", d.read_log())
        c.close()
        self.stop(d)
        self.assertTrue(os.path.exists(os.path.join(sdir, "snapshot.safetensors")))   # left for a human

    def test_open_retried_with_its_key_returns_the_same_session(self):
        # A lost open reply must not strand the session: the retry (same
        # name, same open_key) gets the token, across a restart too.
        d = self.start()
        c = Req(d.url)
        key = "k-" + "7f3a9c" * 4
        first = c.call("open", session="kept", optimizer="sgd", hparams={"lr": 0.5}, open_key=key,
                       durability="always")
        self.assertTrue(first["ok"], first)
        self.assertFalse(first["existing"])
        s = {"session": "kept", "token": first["token"]}
        c.call("register", **s, params={"w": tensor(np.ones(3, np.float32))})
        c.call("step", **s, grads={"w": tensor(np.ones(3, np.float32))})
        again = c.call("open", session="kept", optimizer="sgd", hparams={"lr": 0.5}, open_key=key)
        self.assertTrue(again["ok"], again)
        self.assertTrue(again["existing"])
        self.assertEqual(again["token"], first["token"])
        self.assertEqual(again["lr"], 0.5)
        # Without the key, or with another one, the name is taken.
        for other in ({}, {"open_key": key[:-1] + "x"}):
            r = c.call("open", session="kept", optimizer="sgd", hparams={"lr": 0.5}, **other)
            self.assertEqual(r["error"], "SESSION_EXISTS", r)
        for bad in ("short", "x" * 65, "has space 0123456789", 5):
            r = c.call("open", session="other", optimizer="sgd", hparams={"lr": 0.5}, open_key=bad)
            self.assertEqual(r["error"], "BAD_REQUEST", (bad, r))
        self.assertEqual(c.call("info", session="other", token="0" * 32)["error"], "UNKNOWN_SESSION")
        blob = c.call("export", **s)["snapshot"]
        c.close()
        d.kill()

        d = self.start()
        c = Req(d.url)
        after = c.call("open", session="kept", optimizer="sgd", open_key=key)
        self.assertTrue(after["existing"], after)
        self.assertEqual(after["token"], first["token"])
        self.assertEqual(c.call("info", **s)["steps"], 1)
        # An imported copy has a new token, which the old key must not reveal.
        imported = c.call("import", snapshot=blob, session="copy")
        self.assertTrue(imported["ok"], imported)
        r = c.call("open", session="copy", optimizer="sgd", hparams={"lr": 0.5}, open_key=key)
        self.assertEqual(r["error"], "SESSION_EXISTS", r)
        c.close()
        self.stop(d)

    def test_close_removes_files(self):
        d = self.start("--snapshot-interval", "1")
        c = Req(d.url)
        s = self.setup_session(c, "gone")
        sdir = os.path.join(self.state, "sessions", "gone")
        deadline = time.time() + 10
        while not os.path.exists(sdir) and time.time() < deadline:
            time.sleep(0.1)
        self.assertTrue(os.path.exists(sdir))
        self.assertTrue(c.call("close", **s)["ok"])
        self.assertFalse(os.path.exists(sdir))
        c.close()
        self.stop(d)
        d = self.start()
        c = Req(d.url)
        self.assertEqual(c.call("sessions")["sessions"], [])
        c.close()
        self.stop(d)




class Lifecycle(unittest.TestCase):
    """Export/import between daemons, idle expiry."""

    def setUp(self):
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.kill()
            d.cleanup()

    def start(self, *args):
        d = Daemon(*args)
        self.daemons.append(d)
        return d

    def test_export_import_moves_a_session_between_daemons(self):
        a, b = self.start(), self.start()
        ca, cb = Req(a.url), Req(b.url)
        r = ca.call("open", session="mover", optimizer="sgd", hparams={"lr": 0.1, "momentum": 0.9},
                    scheduler="step", sched_hparams={"step_size": 2})
        s = {"session": "mover", "token": r["token"]}
        ca.call("register", **s, params={"w": tensor(np.arange(5, dtype=np.float32))})
        g = lambda i: {"w": tensor(np.full(5, 0.1 * (i + 1), np.float32))}
        for i in range(3):
            ca.call("step", **s, grads=g(i), seq=i + 1, client="t")
        blob = ca.call("export", **s)["snapshot"]
        self.assertEqual(ca.call("export", session="mover", token="0" * 32)["error"], "BAD_TOKEN")
        imported = cb.call("import", snapshot=blob, session="moved", durability="always")
        self.assertTrue(imported["ok"], imported)
        self.assertEqual(imported["steps"], 3)
        self.assertNotEqual(imported["token"], s["token"])          # a token of its own
        t = {"session": "moved", "token": imported["token"]}
        info_b = cb.call("info", **t)
        self.assertEqual(info_b["durability"], "always")
        info_a = ca.call("info", **s)
        for key in ("steps", "lr", "base_lr", "hparams", "sched_hparams", "params"):
            self.assertEqual(info_b[key], info_a[key], key)
        # Both continue identically, momentum buffers, schedule and sequence numbers included.
        self.assertTrue(cb.call("step", **t, grads=g(2), seq=3, client="t")["duplicate"])
        for i in range(3, 6):
            ra = ca.call("step", **s, grads=g(i))
            rb = cb.call("step", **t, grads=g(i))
            self.assertEqual(ra["params"]["w"]["data"], rb["params"]["w"]["data"])
            self.assertEqual(ra["lr"], rb["lr"])
        self.assertEqual(cb.call("import", snapshot=blob, session="moved")["error"], "SESSION_EXISTS")
        self.assertEqual(cb.call("import", snapshot=b"junk" * 10)["error"], "BAD_REQUEST")
        self.assertEqual(cb.call("import", snapshot=blob[:-7])["error"], "BAD_REQUEST")
        self.assertTrue(cb.call("import", snapshot=blob)["ok"])     # under its stored name
        ca.close()
        cb.close()

    def test_idle_sessions_expire(self):
        d = self.start("--session-ttl", "2")
        c = Req(d.url)
        kept = {"session": "busy", "token": c.call("open", session="busy", optimizer="adam")["token"]}
        idle = {"session": "idle", "token": c.call("open", session="idle", optimizer="adam")["token"]}
        deadline = time.time() + 8
        while time.time() < deadline and c.call("info", **kept)["ok"]:
            if not any(x["session"] == "idle" for x in c.call("sessions")["sessions"]):
                break
            time.sleep(0.3)
        self.assertEqual(c.call("info", **idle)["error"], "UNKNOWN_SESSION")
        self.assertTrue(c.call("info", **kept)["ok"])
        self.assertIn("expired", d.read_log())
        self.assertFalse(os.path.exists(os.path.join(d.state_dir, "sessions", "idle")))
        c.close()


class WriteAheadLog(unittest.TestCase):
    """Steps logged before they apply: kill -9, torn tails, retries, full disks."""

    def setUp(self):
        self.state = tempfile.mkdtemp(prefix="optimd-state-")
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.kill()
            d.cleanup()
        shutil.rmtree(self.state, ignore_errors=True)

    def start(self, *args, **kw):
        # A long snapshot interval: after a crash everything must come back
        # from the log, not from a lucky snapshot.
        d = Daemon("--snapshot-interval", "3600", *args, state_dir=self.state, **kw)
        self.daemons.append(d)
        return d

    @staticmethod
    def grad(i, n=1000):
        return {"w": tensor(np.random.default_rng(1000 + i).standard_normal(n).astype(np.float32))}

    def open_session(self, c, name, durability="always", n=1000):
        r = c.call("open", session=name, optimizer="adamw", hparams={"lr": 0.01}, durability=durability)
        self.assertTrue(r["ok"], r)
        s = {"session": name, "token": r["token"]}
        r = c.call("register", **s, params={"w": tensor(np.linspace(-1, 1, n, dtype=np.float32))})
        self.assertTrue(r["ok"], r)
        return s

    def reference(self, steps):
        d = Daemon()
        self.daemons.append(d)
        c = Req(d.url)
        s = self.open_session(c, "reference", "none")
        for i in range(steps):
            last = c.call("step", **s, grads=self.grad(i))
        c.close()
        return last["params"]["w"]["data"]

    def test_kill9_at_random_moments_loses_and_repeats_nothing(self):
        """SIGKILL at random moments, at least 50 times, while a client
        streams sequenced steps (durability always) and retries the one in
        flight after each restart: the end state equals an uninterrupted
        run's bit for bit."""
        kills_wanted = 50
        rng = random.Random(5)
        d = self.start()
        c = Req(d.url, timeout_ms=3000)
        s = self.open_session(c, "crashy")
        kills, duplicates, i = 0, 0, 0
        killer = None
        steps = None
        while steps is None or i < steps:
            if steps is None and kills >= kills_wanted:
                steps = i + 20     # a few more steps on the last daemon
            if killer is None and kills < kills_wanted:
                killer = threading.Timer(rng.uniform(0.0, 0.02), d.kill)
                killer.start()
            try:
                r = c.call("step", **s, grads=self.grad(i), seq=i + 1, client="trainer", **{"return": False})
            except NngError:
                r = None
            if r is not None and r["ok"]:
                duplicates += r["duplicate"]
                i += 1
                continue
            if r is not None and d.alive():
                self.fail(r)
            # The daemon died: restart it on the same state and retry step i.
            killer.join()
            killer = None
            d.kill()
            kills += 1
            c.close()
            d = self.start()
            c = Req(d.url, timeout_ms=3000)
            self.assertTrue(c.call("attach", **s)["ok"])
        if killer is not None:
            killer.cancel()
        expected = self.reference(steps)
        info = c.call("info", **s)
        self.assertEqual(info["steps"], steps, "a step was lost or applied twice")
        self.assertEqual(info["params"][0]["steps"], steps)
        got = c.call("pull", **s)["params"]["w"]["data"]
        self.assertEqual(got, expected, "state after %d kills differs from the uninterrupted run" % kills)
        self.assertGreaterEqual(kills, kills_wanted)
        print("\n  %d steps, %d kills, %d retries answered as duplicates" % (steps, kills, duplicates),
              file=sys.stderr)
        c.close()

    def crash_after(self, n_steps):
        d = self.start()
        c = Req(d.url)
        s = self.open_session(c, "torn")
        for i in range(n_steps):
            self.assertTrue(c.call("step", **s, grads=self.grad(i), **{"return": False})["ok"])
        c.close()
        d.kill()
        return s, os.path.join(self.state, "sessions", "torn", "wal.log")

    def restarted_steps(self, s):
        d = self.start()
        c = Req(d.url)
        info = c.call("info", **s)
        c.close()
        self.assertTrue(info["ok"], info)
        return info["steps"], d

    def test_torn_tail_is_cut_at_the_last_good_record(self):
        s, wal = self.crash_after(5)
        with open(wal, "ab") as f:            # half a record: a crash mid-append
            f.write(struct.pack("<II", 5000, 12345) + b"\x01" * 100)
        steps, d = self.restarted_steps(s)
        self.assertEqual(steps, 5)
        self.assertIn("log cut", d.read_log())
        d.kill()

    def test_corrupt_record_is_cut_with_everything_after_it(self):
        s, wal = self.crash_after(5)
        size = os.path.getsize(wal)
        with open(wal, "r+b") as f:           # flip one bit inside the last record
            f.seek(size - 10)
            b = f.read(1)
            f.seek(size - 10)
            f.write(bytes([b[0] ^ 0x01]))
        steps, d = self.restarted_steps(s)
        self.assertEqual(steps, 4)
        self.assertIn("log cut", d.read_log())
        self.assertLess(os.path.getsize(wal), size)
        d.kill()

    def test_retried_step_is_applied_once(self):
        d = self.start()
        c = Req(d.url)
        s = self.open_session(c, "retry", "interval", n=8)
        first = c.call("step", **s, grads=self.grad(0, 8), seq=1, client="a")
        self.assertFalse(first["duplicate"])
        again = c.call("step", **s, grads=self.grad(0, 8), seq=1, client="a")
        self.assertTrue(again["ok"] and again["duplicate"], again)
        self.assertEqual(again["steps"], 1)
        self.assertEqual(again["lr"], first["lr"])
        self.assertEqual(again["params"]["w"]["data"], first["params"]["w"]["data"])
        second = c.call("step", **s, grads=self.grad(1, 8), seq=2, client="a")
        self.assertEqual((second["steps"], second["duplicate"]), (2, False))
        # An older number was applied too; only the latest record is kept,
        # so its counters answer (docs/protocol.md, step).
        stale = c.call("step", **s, grads=self.grad(0, 8), seq=1, client="a")
        self.assertEqual((stale["steps"], stale["duplicate"]), (2, True))
        other = c.call("step", **s, grads=self.grad(2, 8), seq=1, client="b")
        self.assertEqual((other["steps"], other["duplicate"]), (3, False))  # a client of its own
        unsequenced = c.call("step", **s, grads=self.grad(3, 8))
        self.assertEqual(unsequenced["steps"], 4)
        c.close()
        d.kill()                                   # the client table survives a crash too
        d = self.start()
        c = Req(d.url)
        again = c.call("step", **s, grads=self.grad(1, 8), seq=2, client="a")
        self.assertEqual((again["steps"], again["duplicate"]), (2, True))
        self.assertEqual(c.call("info", **s)["steps"], 4)
        self.assertEqual(c.call("info", **s, client="a")["client_seq"], 2)
        self.assertEqual(c.call("attach", **s, client="nobody")["client_seq"], 0)
        self.assertNotIn("client_seq", c.call("info", **s))
        # 4096 records at most: the client idle longest is forgotten first.
        for k in range(4096):
            self.assertTrue(c.call("step", **s, grads={}, seq=1, client="w%d" % k)["ok"])
        self.assertEqual(c.call("info", **s, client="a")["client_seq"], 0)       # evicted
        self.assertEqual(c.call("info", **s, client="w4095")["client_seq"], 1)   # kept
        self.assertTrue(c.call("step", **s, grads={}, seq=1, client="w4095")["duplicate"])
        c.close()

    def test_large_log_is_compacted_into_a_snapshot(self):
        d = self.start()
        c = Req(d.url, timeout_ms=60000)
        n = 2_000_000                       # 8 MB a step: the log reaches the 64 MiB floor at step 8
        s = self.open_session(c, "compact", "interval", n=n)
        sdir = os.path.join(self.state, "sessions", "compact")
        for i in range(10):
            self.assertTrue(c.call("step", **s, grads=self.grad(i, n), **{"return": False})["ok"])
        self.assertLess(os.path.getsize(os.path.join(sdir, "wal.log")), 64 << 20)
        self.assertGreaterEqual(snapshot_steps(os.path.join(sdir, "snapshot.safetensors")), 7)
        before = c.call("pull", **s)["params"]["w"]["data"]
        c.close()
        d.kill()
        d = self.start()
        c = Req(d.url, timeout_ms=60000)
        self.assertEqual(c.call("info", **s)["steps"], 10)
        self.assertEqual(c.call("pull", **s)["params"]["w"]["data"], before)
        c.close()

    def test_full_disk_fails_the_step_and_changes_nothing(self):
        d = self.start(max_file_bytes=64 * 1024)
        c = Req(d.url)
        s = self.open_session(c, "full", n=1000)      # each logged step is ~4 kB
        applied = 0
        for i in range(40):
            r = c.call("step", **s, grads=self.grad(i))
            if not r["ok"]:
                break
            applied += 1
            last = r["params"]["w"]["data"]
        self.assertFalse(r["ok"], "the log never filled up")
        self.assertEqual(r["error"], "STORAGE")
        self.assertGreater(applied, 3)
        info = c.call("info", **s)
        self.assertEqual(info["steps"], applied)                 # the failed step left no trace
        self.assertEqual(c.call("pull", **s)["params"]["w"]["data"], last)
        self.assertEqual(c.call("step", **s, grads=self.grad(99))["error"], "STORAGE")
        self.assertTrue(c.call("sessions")["ok"])                # reads still served
        c.close()
        d.kill()
        d = self.start()                                         # and nothing acknowledged was lost
        c = Req(d.url)
        self.assertEqual(c.call("info", **s)["steps"], applied)
        self.assertEqual(c.call("pull", **s)["params"]["w"]["data"], last)
        c.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
