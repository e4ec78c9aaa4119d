"""Sessions survive a restart of the daemon: snapshots in the state
directory, written on a timer and at a graceful stop, read back at start;
a corrupt latest snapshot falls back to the previous one. Real daemons,
real sockets, real files."""
import json
import os
import shutil
import struct
import tempfile
import time
import unittest

import numpy as np

from nngwire import Daemon, Req, array, tensor


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
        deadline = time.time() + 10
        while not os.path.exists(os.path.join(sdir, "snapshot.safetensors")) and time.time() < deadline:
            time.sleep(0.1)
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


if __name__ == "__main__":
    unittest.main(verbosity=2)
