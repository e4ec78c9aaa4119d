"""Row-sparse gradients through the real daemon against torch 1.13.1.

sparse_adam, sparse_adagrad and sparse_sgd get `step` requests whose
gradients are {rows, values} maps; torch gets the same gradients as
uncoalesced torch.sparse_coo_tensor grads (rows in arrival order, as an
nn.Embedding(sparse=True) backward makes them) in torch.optim.SparseAdam,
Adagrad and SGD. Every reply's rows and values, the parameters (pull) and
the optimizer state (state) must equal torch's bit for bit.

Where the daemon cannot be bit-identical (a row named three or more times
in one step for sparse_adam / sparse_adagrad, where torch sums in the order
of its unstable sort and the daemon in arrival order; any repeated row for
sparse_sgd, whose torch path does not coalesce at all) the difference is
measured and bounded.

Also checked: rows a step does not name keep their values and state
bytes; the reply lists exactly the sorted unique rows; the dense `adam`
plugin is lazy under sparse gradients (equal to torch's functional Adam run
on the gathered rows). Run with Debian's /usr/bin/python3; exits 77 when
torch is missing.
"""
import sys
import unittest
import zlib

try:
    import numpy as np
    import torch
    import torch.optim._functional as torch_functional
except ImportError as exc:  # pragma: no cover - depends on the machine
    print("skipped: torch 1.13.1 not importable (%s)" % exc)
    sys.exit(77)

from nngwire import Daemon, Req, array, tensor

STEPS = 25
SHAPES = {"emb": (50, 8), "vec": (40,), "cube": (20, 3, 2), "wide": (30, 40)}
# Rows of "emb" that no step names before this step, so that they are first
# touched late (their Adagrad sum must then start from the initial value).
LATE_ROWS = range(40, 50)
LATE_FROM = 15
# Steps that name some late rows for the first time (so they are touched
# first at different steps).
LATE_FIRST = {LATE_FROM: [40, 41, 42, 43, 44], LATE_FROM + 4: [45, 46, 47, 48, 49]}
# Steps where "vec" gets exactly one row: torch's dense.add_(sparse, alpha)
# rounds twice there (a one-entry sparse tensor is flagged coalesced).
SINGLE_ROW_STEPS = (3, 7, 11, 16, 20, 24)
NP_DTYPE = {"f32": np.float32, "f64": np.float64}
TORCH_DTYPE = {"f32": torch.float32, "f64": torch.float64}


def same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def ulps(a, b):
    """Largest distance in units in the last place between two arrays of
    the same float dtype (0 when bit-identical)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    it = {4: np.int32, 8: np.int64}[a.dtype.itemsize]
    ia, ib = a.view(it).astype(np.int64), b.view(it).astype(np.int64)
    # Map the sign-magnitude encoding onto a monotonic integer line.
    low = np.iinfo(it).min
    ia = np.where(ia < 0, low - ia, ia)
    ib = np.where(ib < 0, low - ib, ib)
    return int(np.max(np.abs(ia - ib))) if a.size else 0


def draw_hparams(plugin, rng, draw):
    """One random configuration: the daemon's hyperparameters and the
    torch optimizer factory that matches them."""
    lr = float(10 ** rng.uniform(-4, -1))
    maximize = bool(rng.integers(0, 2))
    if plugin == "sparse_adam":
        beta1 = float([0.0, 0.5, 0.9, rng.uniform(0.8, 0.99)][draw % 4])
        beta2 = float(rng.uniform(0.9, 0.9999))
        eps = float(10 ** rng.uniform(-10, -3))
        hp = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "maximize": maximize}
        return hp, lambda ps: torch.optim.SparseAdam(ps, lr=lr, betas=(beta1, beta2), eps=eps,
                                                     maximize=maximize)
    if plugin == "sparse_adagrad":
        lr_decay = 0.0 if draw == 1 else float(rng.uniform(0, 0.1))
        # The first draw always has a positive initial value: rows first
        # touched late must start from it.
        init = 0.0 if draw == 2 else float(rng.uniform(0.01, 1.0))
        eps = float(10 ** rng.uniform(-10, -3))
        hp = {"lr": lr, "lr_decay": lr_decay, "initial_accumulator_value": init, "eps": eps,
              "maximize": maximize}
        return hp, lambda ps: torch.optim.Adagrad(ps, lr=lr, lr_decay=lr_decay,
                                                  initial_accumulator_value=init, eps=eps,
                                                  maximize=maximize)
    assert plugin == "sparse_sgd"
    hp = {"lr": lr, "maximize": maximize}
    return hp, lambda ps: torch.optim.SGD(ps, lr=lr, maximize=maximize)


def draw_rows(rng, name, step, max_repeat):
    """Row indices for one step of one parameter, in arrival order: empty
    sometimes, with repeats up to `max_repeat` times, never the late rows
    of "emb" before LATE_FROM."""
    n_rows = SHAPES[name][0]
    if name == "vec" and step in SINGLE_ROW_STEPS:
        return [int(rng.integers(0, n_rows))]
    kind = rng.integers(0, 8)
    if kind == 0 and not (name == "emb" and step in LATE_FIRST):
        return []
    allowed = [r for r in range(n_rows) if not (name == "emb" and r in LATE_ROWS and step < LATE_FROM)]
    unique = rng.choice(allowed, size=int(rng.integers(1, min(len(allowed), 20) + 1)), replace=False)
    rows = list(LATE_FIRST.get(step, [])) if name == "emb" else []
    unique = [r for r in unique if r not in rows]
    for r in unique:
        rows += [int(r)] * int(rng.integers(1, max_repeat + 1))
    rng.shuffle(rows)
    return rows


def draw_values(rng, name, n, dtype):
    shape = (n,) + SHAPES[name][1:]
    scale = np.exp(rng.uniform(-3, 3, size=(n,) + (1,) * (len(shape) - 1)))
    return (rng.standard_normal(shape) * scale).astype(NP_DTYPE[dtype])


def sparse_grad(rows, values, shape):
    idx = torch.tensor(rows, dtype=torch.int64).reshape(1, len(rows))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(values.copy()), shape)


class Session:
    """One daemon session and the torch optimizer it must equal."""

    def __init__(self, test, c, name, plugin, hp, make_torch, dtype, rng):
        self.test, self.c, self.name, self.dtype = test, c, name, dtype
        r = c.call("open", session=name, optimizer=plugin, hparams=hp)
        test.assertTrue(r["ok"], r)
        self.token = r["token"]
        self.init = {k: (rng.standard_normal(s)).astype(NP_DTYPE[dtype]) for k, s in SHAPES.items()}
        r = self.call("register", params={k: tensor(v) for k, v in self.init.items()})
        test.assertTrue(r["ok"], r)
        self.torch_params = {k: torch.tensor(v, requires_grad=True) for k, v in self.init.items()}
        self.opt = make_torch(list(self.torch_params.values())) if make_torch else None

    def call(self, op, **kw):
        return self.c.call(op, session=self.name, token=self.token, **kw)

    def step(self, grads):
        """grads: name -> (rows, values). Steps the daemon and torch; returns
        the daemon's reply."""
        wire = {k: {"rows": rows, "values": tensor(vals)} for k, (rows, vals) in grads.items()}
        r = self.call("step", grads=wire)
        self.test.assertTrue(r["ok"], r)
        if self.opt is not None:
            counted_only = []
            for k, p in self.torch_params.items():
                p.grad = sparse_grad(*grads[k], SHAPES[k]) if k in grads else None
                if (k in grads and not grads[k][0] and len(SHAPES[k]) > 1
                        and not isinstance(self.opt, torch.optim.SGD)):
                    # torch 1.13's SparseAdam and Adagrad raise on a gradient
                    # with no rows for a parameter of 2+ dimensions (a shape
                    # bug in sparse_mask); for 1-D ones they count the step
                    # and change nothing, which is what the daemon does for
                    # every shape. Do that here.
                    p.grad = None
                    counted_only.append(p)
            self.opt.step()
            for p in counted_only:
                st = self.opt.state[p]
                if isinstance(self.opt, torch.optim.SparseAdam) and not st:
                    st.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                st["step"] += 1  # Adagrad: a float32 tensor, made at construction
        return r

    def pull(self):
        r = self.call("pull")
        self.test.assertTrue(r["ok"], r)
        return {k: array(v) for k, v in r["params"].items()}

    def state(self):
        r = self.call("state")
        self.test.assertTrue(r["ok"], r)
        return {k: {s: array(t) for s, t in slots.items()} for k, slots in r["state"].items()}

    def close(self):
        self.call("close")


class SparseParity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        cls.c = Req(cls.daemon.url)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        code = cls.daemon.stop()
        cls.daemon.cleanup()
        assert code == 0, "optimd exited with %d" % code

    def check_reply(self, reply, grads, torch_params, label):
        """The reply lists every stepped parameter as {rows, values}: the
        sorted unique rows, and values equal to torch's rows."""
        self.assertEqual(sorted(reply["params"]), sorted(grads), label)
        for k, (rows, _) in grads.items():
            got = reply["params"][k]
            self.assertEqual(set(got), {"rows", "values"}, label)
            self.assertEqual(got["rows"], sorted(set(rows)), "%s %s: reply rows" % (label, k))
            vals = array(got["values"])
            want = torch_params[k].detach().numpy()[sorted(set(rows))]
            self.assertTrue(same_bits(vals, want),
                            "%s %s: reply values differ from torch by %d ulp"
                            % (label, k, ulps(vals, want) if vals.shape == want.shape else -1))

    def check_state(self, sess, plugin, touched, label):
        """Daemon parameters and slots equal torch's, whole tensors."""
        pulled = sess.pull()
        for k, p in sess.torch_params.items():
            want = p.detach().numpy()
            self.assertTrue(same_bits(pulled[k], want),
                            "%s %s: parameter %d ulp from torch" % (label, k, ulps(pulled[k], want)))
        state = sess.state()
        for k, p in sess.torch_params.items():
            tstate = sess.opt.state.get(p, {})
            if plugin == "sparse_sgd":
                self.assertEqual(state[k], {}, label)  # no slots
                continue
            # Every parameter took step 1, so its slots exist.
            keys = ["exp_avg", "exp_avg_sq"] if plugin == "sparse_adam" else ["sum"]
            self.assertEqual(sorted(state[k]), sorted(keys), label)
            for key in keys:
                got, want = state[k][key], tstate[key].numpy().copy()
                if key == "sum":
                    # Rows never named hold 0 here (the initial value is
                    # added when a row is first touched); torch holds the
                    # initial value there.
                    never = np.ones(SHAPES[k][0], bool)
                    never[sorted(touched[k])] = False
                    self.assertTrue(np.all(got[never] == 0), "%s %s: untouched sum rows" % (label, k))
                    want[never] = 0
                self.assertTrue(same_bits(got, want),
                                "%s %s.%s: %d ulp from torch" % (label, k, key, ulps(got, want)))

    def run_parity(self, plugin, draws):
        rng = np.random.default_rng(zlib.crc32(plugin.encode()))
        for dtype in ("f32", "f64"):
            for draw in range(draws):
                hp, make_torch = draw_hparams(plugin, rng, draw)
                label = "%s %s draw %d %s" % (plugin, dtype, draw, hp)
                sess = Session(self, self.c, "%s-%s-%d" % (plugin, dtype, draw), plugin, hp,
                               make_torch, dtype, rng)
                touched = {k: set() for k in SHAPES}
                # Rows named twice are summed before the update; that is
                # torch's own result for adam/adagrad (a + b = b + a). SGD
                # in torch does not coalesce: no repeats here (see below).
                max_repeat = 1 if plugin == "sparse_sgd" else 2
                for step in range(1, STEPS + 1):
                    if step == 12:
                        # A mutable lr takes effect on the next step, as an
                        # edit of torch's param group.
                        lr = hp["lr"] * 0.5
                        self.assertTrue(sess.call("set_hparams", hparams={"lr": lr})["ok"])
                        sess.opt.param_groups[0]["lr"] = lr
                    grads = {}
                    for k in SHAPES:
                        forced = (k == "emb" and step in LATE_FIRST) or (k == "vec" and step in SINGLE_ROW_STEPS)
                        if rng.integers(0, 6) == 0 and step > 1 and not forced:
                            continue  # not stepped: p.grad is None in torch
                        rows = draw_rows(rng, k, step, max_repeat)
                        grads[k] = (rows, draw_values(rng, k, len(rows), dtype))
                    check_untouched = step % 6 == 0
                    if check_untouched:
                        before, state_before = sess.pull(), sess.state()
                    reply = sess.step(grads)
                    self.check_reply(reply, grads, sess.torch_params, "%s step %d" % (label, step))
                    for k, (rows, _) in grads.items():
                        touched[k] |= set(rows)
                    if check_untouched:
                        after, state_after = sess.pull(), sess.state()
                        for k in SHAPES:
                            keep = np.ones(SHAPES[k][0], bool)
                            keep[sorted(set(grads.get(k, ([], None))[0]))] = False
                            self.assertTrue(same_bits(after[k][keep], before[k][keep]),
                                            "%s step %d: unnamed rows of %s changed" % (label, step, k))
                            for key, old in state_before.get(k, {}).items():
                                self.assertTrue(same_bits(state_after[k][key][keep], old[keep]),
                                                "%s step %d: unnamed rows of %s.%s changed"
                                                % (label, step, k, key))
                    if step in (LATE_FROM - 1, STEPS):
                        self.check_state(sess, plugin, touched, "%s step %d" % (label, step))
                # Rows never named are the registered values, in both.
                final = sess.pull()
                for k in SHAPES:
                    never = sorted(set(range(SHAPES[k][0])) - touched[k])
                    self.assertTrue(same_bits(final[k][never], sess.init[k][never]), label)
                self.assertTrue(set(LATE_ROWS) <= touched["emb"], "late rows never drawn")
                sess.close()

    def test_sparse_adam(self):
        self.run_parity("sparse_adam", 4)

    def test_sparse_adagrad(self):
        self.run_parity("sparse_adagrad", 4)

    def test_sparse_sgd(self):
        self.run_parity("sparse_sgd", 4)

    def test_repeated_rows_bound(self):
        """One step with rows named up to 6 times. sparse_adam and
        sparse_adagrad: rows named at most twice are exact, the others within
        a few ulp (summation order). sparse_sgd: rows named once are exact;
        torch updates repeated rows once per repeat, the daemon once."""
        rng = np.random.default_rng(7)
        worst = {}
        for plugin in ("sparse_adam", "sparse_adagrad", "sparse_sgd"):
            for dtype in ("f32", "f64"):
                hp, make_torch = draw_hparams(plugin, rng, 0)
                sess = Session(self, self.c, "rep-%s-%s" % (plugin, dtype), plugin, hp, make_torch,
                               dtype, rng)
                g_abs = np.zeros(SHAPES["emb"], np.float64)
                for step in range(3):
                    counts = rng.integers(1, 7, size=SHAPES["emb"][0])
                    rows = [r for r in range(SHAPES["emb"][0]) for _ in range(counts[r])]
                    rng.shuffle(rows)
                    vals = draw_values(rng, "emb", len(rows), dtype)
                    reply = sess.step({"emb": (rows, vals)})
                    got = array(reply["params"]["emb"]["values"])
                    want = sess.torch_params["emb"].detach().numpy()
                    exact = counts <= (1 if plugin == "sparse_sgd" else 2)
                    # Exact only while no earlier step put the row off torch.
                    if step == 0:
                        self.assertTrue(same_bits(got[exact], want[exact]),
                                        "%s %s: rows named %s times" % (plugin, dtype,
                                                                        "once" if plugin == "sparse_sgd" else "<= 2"))
                    # The summed gradient is a few ulp off torch's; Adam's
                    # and Adagrad's normalised steps then move by a few ulp
                    # of lr, SGD's by a few ulp of lr * sum |g|; every
                    # update adds a rounding of the parameter (SGD: of each
                    # intermediate, at most |p| + lr * sum |g|).
                    dist = ulps(got, want)
                    np.add.at(g_abs, rows, np.abs(vals.astype(np.float64)))
                    reach = np.abs(want.astype(np.float64)) + hp["lr"] * g_abs
                    eps = np.finfo(NP_DTYPE[dtype]).eps
                    # Also in units of eps * (|p| + lr * sum |g|), which
                    # near-zero parameters do not inflate as ulps do.
                    rel = float(np.max(np.abs(got.astype(np.float64) - want) / (eps * reach)))
                    old_dist, old_rel = worst.get((plugin, dtype), (0, 0.0))
                    worst[(plugin, dtype)] = (max(old_dist, dist), max(old_rel, rel))
                    tol = 8 * (step + 1) * eps * reach + 64 * eps * hp["lr"] * (
                        g_abs if plugin == "sparse_sgd" else step + 1)
                    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
                    self.assertTrue(np.all(diff <= tol), "%s %s step %d: %d ulp" % (plugin, dtype, step, dist))
                sess.close()
        print("\nrepeated rows (up to 6 per row, 3 steps): largest parameter distance from torch, "
              "ulp / eps*(|p| + lr*sum|g|):",
              ", ".join("%s %s %d / %.2f" % (p, d, u, r) for (p, d), (u, r) in sorted(worst.items())),
              file=sys.stderr)

    def test_dense_adam_is_lazy(self):
        """`adam` with row-sparse gradients: unnamed rows and their state
        stay as they are; named rows follow torch's Adam run on the gathered
        rows, with the parameter's step count."""
        rng = np.random.default_rng(11)
        for dtype in ("f32", "f64"):
            hp = {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1,
                  "amsgrad": True}
            sess = Session(self, self.c, "lazy-adam-" + dtype, "adam", hp, None, dtype, rng)
            p = torch.tensor(sess.init["emb"])
            m, v, vmax = (torch.zeros_like(p) for _ in range(3))
            step_t = torch.tensor(0.0)
            for step in range(1, 11):
                rows = draw_rows(rng, "emb", STEPS, 2)
                vals = draw_values(rng, "emb", len(rows), dtype)
                before = sess.pull()["emb"]
                reply = sess.step({"emb": (rows, vals)})
                uniq = sorted(set(rows))
                # torch: coalesce, then Adam on the gathered rows.
                g = sparse_grad(rows, vals, SHAPES["emb"]).coalesce()
                self.assertEqual(g.indices()[0].tolist(), uniq)
                sub = [t[uniq].clone() for t in (p, m, v, vmax)]
                torch_functional.adam([sub[0]], [g.values()], [sub[1]], [sub[2]], [sub[3]], [step_t],
                                      amsgrad=True, beta1=0.8, beta2=0.99, lr=0.01,
                                      weight_decay=0.1, eps=1e-6, maximize=False)
                for full, part in zip((p, m, v, vmax), sub):
                    full[uniq] = part
                got = reply["params"]["emb"]
                self.assertEqual(got["rows"], uniq)
                self.assertTrue(same_bits(array(got["values"]), p.numpy()[uniq]),
                                "adam %s step %d: named rows" % (dtype, step))
                after = sess.pull()["emb"]
                keep = np.ones(SHAPES["emb"][0], bool)
                keep[uniq] = False
                self.assertTrue(same_bits(after[keep], before[keep]), "adam: unnamed rows changed")
                state = sess.state()["emb"]
                for key, t in (("exp_avg", m), ("exp_avg_sq", v), ("max_exp_avg_sq", vmax)):
                    self.assertTrue(same_bits(state[key], t.numpy()), "adam %s step %d: %s" % (dtype, step, key))
            info = sess.call("info")
            self.assertEqual(info["params"][0]["steps"], 10)
            sess.close()


if __name__ == "__main__":
    torch.set_num_threads(1)
    unittest.main(verbosity=2)
