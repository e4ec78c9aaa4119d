"""Hot swap (issue 6) against the real daemon: 8 clients step continuously
while the `toy` plugin is replaced 50 times by a version that updates twice
as far (and back); every step must succeed, be applied by exactly one
version, and carry the plugin's state slot over every swap. Plugins that
are broken (wrong ABI major, no entry symbol, refusing their own defaults,
crashing) are refused with a clear error while the running version goes on;
a plugin directory change is picked up on its own; a session switches
optimizer keeping its momentum buffer. Run by CTest with /usr/bin/python3
(OPTIMD_TOYS: the built toy versions; OPTIMD_VALIDATE: optimd-validate)."""
import os
import shutil
import signal
import tempfile
import threading
import time
import unittest

import numpy as np

from nngwire import Daemon, Req, array, tensor

TOYS = os.environ["OPTIMD_TOYS"]
VALIDATE = os.environ["OPTIMD_VALIDATE"]
ADMIN = "admin-secret-for-the-test"
LR = 0.125
SCALE = {"1.0.0": 1, "2.0.0": 2}


def toy(variant):
    return os.path.join(TOYS, variant, "toy.so")


def put(plugin_dir, variant):
    """Replaces the toy in the directory the way an installer should: a new
    file renamed over the old one."""
    tmp = os.path.join(plugin_dir, ".toy.so.tmp")
    shutil.copyfile(toy(variant), tmp)
    os.replace(tmp, os.path.join(plugin_dir, "toy.so"))


class HotSwap(unittest.TestCase):
    def setUp(self):
        self.plugin_dir = tempfile.mkdtemp(prefix="optimd-toys-")
        put(self.plugin_dir, "v1")
        self.daemon = None

    def tearDown(self):
        if self.daemon:
            rc = self.daemon.stop()
            log = self.daemon.read_log()
            self.daemon.cleanup()
            self.assertEqual(rc, 0, log)
        shutil.rmtree(self.plugin_dir, ignore_errors=True)

    def start(self, watch="off"):
        self.daemon = Daemon("--plugin-dir", self.plugin_dir, "--plugin-dir", os.environ["OPTIMD_PLUGIN_DIR"],
                             "--validator", VALIDATE, "--admin-token", ADMIN, "--watch-plugins", watch)
        return Req(self.daemon.url)

    def toy_version(self, c):
        return next(p["version"] for p in c.call("plugins")["plugins"] if p["id"] == "toy")

    def test_fifty_swaps_under_load(self):
        c = self.start()
        n_clients, swaps = 8, 50
        stop = threading.Event()
        results = [None] * n_clients

        def worker(k):
            w = Req(self.daemon.url)
            r = w.call("open", session=f"w{k}", optimizer="toy", hparams={"lr": LR})
            s = {"session": f"w{k}", "token": r["token"]}
            rng = np.random.default_rng(k)
            p = rng.standard_normal(16).astype(np.float32)
            w.call("register", **s, params={"p": tensor(p)})
            acc = np.zeros(16, np.float32)
            counts, failures, i = {1: 0, 2: 0}, [], 0
            while not stop.is_set() or i < 5:
                # Gradients are powers of two so that scale 1 and 2 give
                # different, exactly representable updates.
                g = (rng.integers(1, 4, 16) * 0.25).astype(np.float32)
                reply = w.call("step", **s, grads={"p": tensor(g)}, seq=i + 1, client=f"c{k}")
                if not reply.get("ok"):
                    failures.append(reply)
                    break
                new = array(reply["params"]["p"])
                which = [sc for sc in (1, 2) if np.array_equal(new, p - np.float32(LR * sc) * g)]
                if len(which) != 1:
                    failures.append(("step %d applied by no single version" % i, new, p, g))
                    break
                counts[which[0]] += 1
                p = new
                acc = acc + g
                i += 1
            state = w.call("state", **s)["state"]["p"]
            results[k] = (counts, failures, np.array_equal(array(state["acc"]), acc), i)
            w.close()

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_clients)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        versions = []
        for n in range(swaps):
            variant = "v2" if n % 2 == 0 else "v1"
            put(self.plugin_dir, variant)
            r = c.call("reload", admin_token=ADMIN)
            self.assertTrue(r["ok"], r)
            loaded = [e for e in r["plugins"] if e["loaded"]]
            self.assertEqual([e["id"] for e in loaded], ["toy"], r)
            versions.append(loaded[0]["version"])
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(60)
        self.assertEqual(versions, ["2.0.0", "1.0.0"] * (swaps // 2))
        total = {1: 0, 2: 0}
        for k, (counts, failures, acc_ok, steps) in enumerate(results):
            self.assertEqual(failures, [], k)
            self.assertTrue(acc_ok, "client %d: the acc slot lost gradients across swaps" % k)
            total[1] += counts[1]
            total[2] += counts[2]
        # Both versions really served steps.
        self.assertGreater(total[1], 0)
        self.assertGreater(total[2], 0)
        print("steps by version 1: %d, by version 2: %d" % (total[1], total[2]))
        # Old versions were unloaded once no session used them.
        c.close()
        unloads = self.daemon.read_log().count("unloaded plugin toy")
        self.assertGreaterEqual(unloads, swaps - 2)

    def test_broken_versions_are_refused_and_the_running_one_stays(self):
        c = self.start()
        r = c.call("open", session="keep", optimizer="toy", hparams={"lr": LR})
        s = {"session": "keep", "token": r["token"]}
        c.call("register", **s, params={"p": tensor(np.ones(4, np.float32))})
        expect = {"wrong_abi": "ABI", "no_symbol": "optimd_plugin", "refuses": "validate",
                  "crashes": "validate"}
        for variant, word in expect.items():
            r = c.call("load", path=toy(variant), admin_token=ADMIN)
            self.assertEqual(r.get("error"), "PLUGIN", (variant, r))
            self.assertIn(word, r["message"], (variant, r))
            # Through the directory and a reload, too.
            put(self.plugin_dir, variant)
            r = c.call("reload", admin_token=ADMIN)
            self.assertTrue(r["ok"], r)
            self.assertEqual([e["loaded"] for e in r["plugins"]], [False], r)
            self.assertEqual(self.toy_version(c), "1.0.0")
            step = c.call("step", **s, grads={"p": tensor(np.ones(4, np.float32))})
            self.assertTrue(step["ok"], step)
        self.assertEqual(c.call("info", **s)["steps"], 4)
        # Admin ops need the admin token.
        self.assertEqual(c.call("reload").get("error"), "BAD_TOKEN")
        self.assertEqual(c.call("reload", admin_token="nope").get("error"), "BAD_TOKEN")
        self.assertEqual(c.call("load", path=toy("v2"), admin_token="x").get("error"), "BAD_TOKEN")
        # A good version loads by path, and the session moves to it with
        # the new key at its default.
        r = c.call("load", path=toy("v2"), admin_token=ADMIN)
        self.assertTrue(r["ok"], r)
        c.call("step", **s, grads={"p": tensor(np.ones(4, np.float32))})
        info = c.call("info", **s)
        self.assertEqual(info["optimizer_version"], "2.0.0")
        self.assertEqual(info["hparams"], {"lr": LR, "extra": 0.5})
        c.close()

    def test_a_changed_directory_is_picked_up(self):
        c = self.start(watch="on")
        self.assertEqual(self.toy_version(c), "1.0.0")
        put(self.plugin_dir, "v2")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.toy_version(c) != "2.0.0":
            time.sleep(0.05)
        self.assertEqual(self.toy_version(c), "2.0.0")
        c.close()

    def test_a_changed_slot_layout_needs_the_migrate_hook(self):
        c = self.start()
        r = c.call("open", session="mig", optimizer="toy", hparams={"lr": LR})
        s = {"session": "mig", "token": r["token"]}
        g = np.array([0.25, 0.5, 1.0], np.float32)
        c.call("register", **s, params={"p": tensor(np.zeros(3, np.float32))})
        c.call("step", **s, grads={"p": tensor(g)})
        # 3.1.0 keeps acc as float64 and has no hook: the session stays.
        self.assertTrue(c.call("load", path=toy("v3_nohook"), admin_token=ADMIN)["ok"])
        c.call("step", **s, grads={"p": tensor(g)})
        info = c.call("info", **s)
        self.assertEqual(info["optimizer_version"], "1.0.0")
        self.assertIn("cannot carry it", self.daemon.read_log())
        # 3.0.0 has the hook: acc becomes float64 with the sum so far.
        self.assertTrue(c.call("load", path=toy("v3"), admin_token=ADMIN)["ok"])
        c.call("step", **s, grads={"p": tensor(g)})
        self.assertEqual(c.call("info", **s)["optimizer_version"], "3.0.0")
        acc = array(c.call("state", **s)["state"]["p"]["acc"])
        self.assertEqual(acc.dtype, np.float64)
        np.testing.assert_array_equal(acc, 3 * g.astype(np.float64))
        c.close()

    def test_a_misbehaving_plugin_stops_its_session_not_the_daemon(self):
        # The validator would refuse these (they fail on the third step of
        # its runs too); this daemon runs without one.
        self.daemon = Daemon("--plugin-dir", self.plugin_dir, "--plugin-dir", os.environ["OPTIMD_PLUGIN_DIR"],
                             "--admin-token", ADMIN, "--watch-plugins", "off")
        c = Req(self.daemon.url)
        for variant, stays in (("gives_up", False), ("writes_nan", True)):
            put(self.plugin_dir, "v1")
            self.assertTrue(c.call("reload", admin_token=ADMIN)["ok"])
            r = c.call("open", session=variant, optimizer="toy", hparams={"lr": LR})
            s = {"session": variant, "token": r["token"]}
            other = c.call("open", session=variant + "-other", optimizer="sgd", hparams={"lr": 0.1})
            o = {"session": variant + "-other", "token": other["token"]}
            g = {"p": tensor(np.ones(4, np.float32))}
            for t in (s, o):
                c.call("register", **t, params={"p": tensor(np.zeros(4, np.float32))})
            self.assertTrue(c.call("load", path=toy(variant), admin_token=ADMIN)["ok"])
            for _ in range(2):
                self.assertTrue(c.call("step", **s, grads=g)["ok"])
            r = c.call("step", **s, grads=g)
            self.assertEqual(r.get("error"), "PLUGIN", r)
            self.assertIn("stopped", r["message"])
            r = c.call("step", **s, grads=g)
            self.assertIn("is stopped", r.get("message", ""), r)
            self.assertEqual(c.call("info", **s)["steps"], 2)            # reads go on
            self.assertTrue(c.call("pull", **s)["ok"])
            self.assertTrue(c.call("step", **o, grads=g)["ok"])           # so does everyone else
            # A fixed version takes the session if its parameters are finite.
            put(self.plugin_dir, "v1")
            self.assertTrue(c.call("reload", admin_token=ADMIN)["ok"])
            r = c.call("step", **s, grads=g)
            if stays:
                self.assertEqual(r.get("error"), "PLUGIN", r)
                self.assertIn("is stopped", r["message"])
            else:
                self.assertTrue(r["ok"], r)
                self.assertEqual(r["steps"], 3)
        c.close()

    def test_sighup_rescans(self):
        c = self.start(watch="off")
        put(self.plugin_dir, "v2")
        time.sleep(0.3)
        self.assertEqual(self.toy_version(c), "1.0.0")     # not watching: nothing yet
        self.daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.toy_version(c) != "2.0.0":
            time.sleep(0.05)
        self.assertEqual(self.toy_version(c), "2.0.0")
        c.close()

    def test_switch_optimizer_keeps_the_momentum_buffer(self):
        c = self.start()
        r = c.call("open", session="sw", optimizer="sgd", hparams={"lr": 0.1, "momentum": 0.9},
                   scheduler="step", sched_hparams={"step_size": 2, "gamma": 0.5})
        s = {"session": "sw", "token": r["token"]}
        c.call("register", **s, params={"w": tensor(np.linspace(-1, 1, 5).astype(np.float32))})
        for i in range(3):
            c.call("step", **s, grads={"w": tensor(np.full(5, 0.5 + i, np.float32))})
        before = c.call("state", **s)["state"]["w"]
        r = c.call("switch", **s, optimizer="rmsprop", hparams={"momentum": 0.5})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["carried"], ["momentum_buffer"])
        after = c.call("state", **s)["state"]["w"]
        np.testing.assert_array_equal(array(after["momentum_buffer"]), array(before["momentum_buffer"]))
        np.testing.assert_array_equal(array(after["square_avg"]), np.zeros(5, np.float32))
        info = c.call("info", **s)
        self.assertEqual((info["optimizer"], info["steps"]), ("rmsprop", 3))
        self.assertEqual(info["hparams"]["momentum"], 0.5)
        self.assertEqual(info["hparams"]["lr"], 0.1)      # carried by key
        self.assertEqual(info["lr"], 0.05)                # StepLR(2, 0.5) at epoch 3
        step = c.call("step", **s, grads={"w": tensor(np.ones(5, np.float32))})
        self.assertTrue(step["ok"], step)
        self.assertEqual((step["lr"], step["next_lr"]), (0.05, 0.025))   # the schedule goes on
        self.assertEqual(c.call("switch", **s, optimizer="nope").get("error"), "UNKNOWN_PLUGIN")
        self.assertEqual(c.call("switch", **s, optimizer="sgd", hparams={"nesterov": True, "momentum": 0.0}).get("error"),
                         "BAD_HPARAM")
        self.assertEqual(c.call("info", **s)["optimizer"], "rmsprop")
        c.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
