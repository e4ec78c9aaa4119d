"""Shared by the SDK tests: start a daemon with an extra plugin directory,
open a session on a plugin, step it with seeded gradients, and compare every
parameter and state slot with an update rule computed here in numpy."""
import sys

import numpy as np

from nngwire import Daemon, Req, array, tensor


def train(plugin_dir, optimizer, hparams, rule, slot_key, steps=5):
    """`rule(p, g, m, dtype) -> (p, m)`: one step of the expected update in
    numpy, every operation in the parameter's dtype. Returns the daemon's
    log. Raises AssertionError on any mismatch."""
    d = Daemon("--plugin-dir", plugin_dir)
    try:
        c = Req(d.url)
        listed = {p["id"]: p for p in c.call("plugins")["plugins"]}
        assert optimizer in listed, f"{optimizer} not loaded; log:\n{d.read_log()}"
        assert "sgd" in listed, "the shipped plugins are gone"
        keys = {h["key"] for h in listed[optimizer]["hparams"]}
        assert set(hparams) <= keys, (hparams, keys)

        r = c.call("open", session="sdk", optimizer=optimizer, hparams=hparams)
        assert r.get("ok"), r
        s = {"session": "sdk", "token": r["token"]}
        rng = np.random.default_rng(6)
        params = {"w32": rng.uniform(-1, 1, (4, 3)).astype(np.float32),
                  "w64": rng.uniform(-1, 1, 7)}
        slots = {k: np.zeros_like(v) for k, v in params.items()}
        r = c.call("register", **s, params={k: tensor(v) for k, v in params.items()})
        assert r.get("ok"), r
        for k in range(1, steps + 1):
            grads = {n: rng.uniform(-1, 1, v.shape).astype(v.dtype) for n, v in params.items()}
            grads["w32"].flat[0] = 0     # no gradient yet: sign(m) = 0, no move
            r = c.call("step", **s, grads={n: tensor(g) for n, g in grads.items()})
            assert r.get("ok"), r
            assert r["steps"] == k, r
            for n in params:
                before = params[n]
                params[n], slots[n] = rule(params[n], grads[n], slots[n], params[n].dtype)
                got = array(r["params"][n])
                assert got.dtype == before.dtype
                np.testing.assert_array_equal(got, params[n], err_msg=f"{n} after step {k}")
                assert not np.array_equal(got, before), f"{n} did not move at step {k}"
        st = c.call("state", **s)
        assert st.get("ok"), st
        for n in params:
            np.testing.assert_array_equal(array(st["state"][n][slot_key]), slots[n],
                                          err_msg=f"slot {slot_key} of {n}")
        c.close()
    finally:
        rc = d.stop()
        log = d.read_log()
        d.cleanup()
    assert rc == 0, f"optimd exited with {rc} on SIGTERM; log:\n{log}"
    return log


def signum_rule(lr, momentum):
    def rule(p, g, m, dtype):
        b = dtype.type(momentum)
        m = b * m + (dtype.type(1) - b) * g
        return p - dtype.type(lr) * np.sign(m).astype(dtype), m
    return rule


def heavyball_rule(lr, momentum):
    def rule(p, g, v, dtype):
        v = dtype.type(momentum) * v + g
        return p - dtype.type(lr) * v, v
    return rule


def main_signum():
    plugin_dir = sys.argv[1]
    train(plugin_dir, "signum", {"lr": 0.05, "momentum": 0.5}, signum_rule(0.05, 0.5),
          "momentum_buffer")
    print("sdk: signum trained in a daemon, every step as the formula says")
