"""optimd.Client against the real daemon: every op, typed results,
request ids, several threads on one client."""

from __future__ import annotations

import threading
import unittest

import msgpack
import numpy as np

import optimd

from support import DaemonTestCase, FakeServer


class Ops(DaemonTestCase):
    def setUp(self) -> None:
        self.client = optimd.Client(self.daemon.url, timeout=60)
        self.addCleanup(self.client.close)

    def open(self, name: str, optimizer: str = "sgd", hparams=None, **kwargs) -> optimd.Session:
        session = self.client.open(name, optimizer, {"lr": 0.5} if hparams is None else hparams, **kwargs)
        self.addCleanup(self.client.close_session, session)
        return session

    def test_hello(self) -> None:
        hello = self.client.hello("test_client.py")
        self.assertIsInstance(hello, optimd.Hello)
        self.assertEqual((hello.server, hello.protocol), ("optimd", optimd.PROTOCOL_VERSION))
        self.assertRegex(hello.version, r"^\d+\.\d+")
        self.assertEqual(hello.abi[0], 1)
        self.assertEqual(hello.max_message, 256 * 1024 * 1024)
        self.assertEqual(self.client.hello(), hello)

    def test_plugins(self) -> None:
        plugins = self.client.plugins()
        ids = [p.id for p in plugins]
        self.assertEqual(ids, sorted(ids))
        by_id = {p.id: p for p in plugins}
        for pid in ("sgd", "adam", "adamw"):
            self.assertEqual(by_id[pid].kind, "optimizer")
            self.assertEqual(set(by_id[pid].dtypes), {"f32", "f64"})
            self.assertEqual(by_id[pid].hparam("lr").type, "float")
        for pid in ("step", "cosine"):
            self.assertEqual((by_id[pid].kind, by_id[pid].slots, by_id[pid].dtypes), ("scheduler", (), ()))
        adam = by_id["adam"]
        lr, beta1, amsgrad = adam.hparam("lr"), adam.hparam("beta1"), adam.hparam("amsgrad")
        self.assertEqual((lr.required, lr.mutable, lr.default, lr.min), (False, True, 0.001, 0.0))
        self.assertEqual((beta1.max, beta1.max_exclusive, beta1.min_exclusive), (1.0, True, False))
        self.assertEqual((amsgrad.type, amsgrad.mutable, amsgrad.default), ("bool", False, False))
        self.assertTrue(lr.doc)
        self.assertIn("exp_avg", [s.key for s in adam.slots])
        slot = next(s for s in adam.slots if s.key == "exp_avg")
        self.assertEqual((slot.dtype, slot.shape), ("param", "param"))
        sgd_lr = by_id["sgd"].hparam("lr")
        self.assertEqual((sgd_lr.required, sgd_lr.default), (True, None))
        self.assertEqual(by_id["step"].hparam("step_size").type, "int")
        with self.assertRaises(KeyError):
            adam.hparam("nope")

    def test_session_lifecycle(self) -> None:
        s = self.client.open("life", "adam", {"lr": 0.01, "beta1": 0.8}, scheduler="step",
                             sched_hparams={"step_size": 2, "gamma": 0.5})
        self.assertEqual(s.name, "life")
        self.assertRegex(s.token, r"^[0-9a-f]{32}$")
        self.assertNotIn(s.token, repr(s))
        info = self.client.info(s)
        self.assertIsInstance(info, optimd.SessionInfo)
        self.assertEqual((info.session, info.optimizer, info.scheduler), ("life", "adam", "step"))
        self.assertTrue(info.optimizer_version)
        self.assertEqual(info.hparams["beta1"], 0.8)
        self.assertEqual(info.hparams["amsgrad"], False)
        self.assertEqual(info.sched_hparams, {"step_size": 2, "gamma": 0.5})
        self.assertEqual((info.base_lr, info.lr, info.steps, info.params), (0.01, 0.01, 0, ()))
        self.assertEqual(self.client.attach(s), info)
        self.assertEqual(self.client.attach(optimd.Session("life", s.token)), info)

        listed = {e.session: e for e in self.client.sessions()}
        self.assertEqual(listed["life"], optimd.SessionSummary("life", "adam", "step", 0, 0))

        hp = self.client.set_hparams(s, {"lr": 0.1, "eps": 1e-6})
        self.assertEqual((hp.hparams["lr"], hp.hparams["eps"], hp.base_lr, hp.lr), (0.1, 1e-6, 0.01, 0.1))
        self.assertEqual(self.client.hparams(s), hp)

        self.client.close_session(s)
        self.assertNotIn("life", [e.session for e in self.client.sessions()])
        with self.assertRaises(optimd.UnknownSessionError):
            self.client.info(s)

    def test_open_without_hparams_takes_defaults(self) -> None:
        s = self.open("defaults", "adamw", {})
        hp = self.client.hparams(s)
        self.assertEqual((hp.lr, hp.hparams["weight_decay"], hp.sched_hparams), (0.001, 0.01, {}))
        with self.assertRaises(ValueError):
            self.client.open("x", "sgd", {"lr": 1}, sched_hparams={"T_max": 3})

    def test_open_repeated_with_its_key(self) -> None:
        key = "py-key-0123456789abcdef"
        first = self.open("keyed", open_key=key)
        again = self.client.open("keyed", "sgd", {"lr": 0.5}, open_key=key)
        self.assertEqual(again, first)
        self.assertEqual(again.token, first.token)
        self.assertEqual((first.existing, again.existing), (False, True))
        self.assertEqual((first.lr, again.lr), (0.5, 0.5))
        with self.assertRaises(optimd.SessionExistsError):  # another key is another open
            self.client.open("keyed", "sgd", {"lr": 0.5}, open_key=key[::-1])
        with self.assertRaises(optimd.SessionExistsError):
            self.client.open("keyed", "sgd", {"lr": 0.5})

    def test_register_step_pull(self) -> None:
        s = self.open("rsp")
        w = np.array([1.0, 2.0, 3.0], np.float32)
        b = np.array(4.0, np.float64)
        self.assertEqual(self.client.register(s, {"w": w, "b": b}), 2)
        info = self.client.info(s)
        self.assertEqual([(p.name, p.dtype, p.shape, p.steps) for p in info.params],
                         [("w", "f32", (3,), 0), ("b", "f64", (), 0)])

        # lr 0.5, gradient 1 or 2: exact results.
        r = self.client.step(s, {"w": np.array([1.0, 2.0, 1.0], np.float32)})
        self.assertIsInstance(r, optimd.StepResult)
        self.assertEqual((r.steps, r.lr, r.next_lr), (1, 0.5, 0.5))
        self.assertEqual(set(r.params), {"w"})  # b had no gradient
        np.testing.assert_array_equal(r.params["w"], [0.5, 1.0, 2.5])
        self.assertFalse(r.params["w"].flags.writeable)

        r = self.client.step(s, {"b": np.array(2.0)}, return_params=False)
        self.assertEqual((r.steps, r.params), (2, {}))
        self.assertEqual(self.client.pull(s, ["b"])["b"], 3.0)
        pulled = self.client.pull(s)
        self.assertEqual(set(pulled), {"w", "b"})
        np.testing.assert_array_equal(pulled["w"], [0.5, 1.0, 2.5])
        self.assertEqual(self.client.pull(s, []), {})

        r = self.client.step(s, {})  # an empty step still counts
        self.assertEqual(r.steps, 3)
        info = self.client.info(s)
        self.assertEqual((info.steps, [p.steps for p in info.params]), (3, [1, 1]))

    def test_sequenced_step_is_applied_once(self) -> None:
        s = self.client.open("seq", "sgd", {"lr": 0.5}, durability="always")
        self.addCleanup(self.client.close_session, s)
        self.client.register(s, {"w": np.zeros(2, np.float32)})
        g = {"w": np.ones(2, np.float32)}
        first = self.client.step(s, g, seq=1, client="py")
        retry = self.client.step(s, g, seq=1, client="py")
        self.assertEqual((first.duplicate, retry.duplicate), (False, True))
        self.assertEqual((retry.steps, retry.lr), (first.steps, first.lr))
        np.testing.assert_array_equal(retry.params["w"], first.params["w"])
        self.assertEqual(self.client.info(s).steps, 1)
        self.assertEqual(self.client.info(s).durability, "always")

    def test_server_side_scheduler_lr(self) -> None:
        s = self.open("sched", "sgd", {"lr": 1.0}, scheduler="step", sched_hparams={"step_size": 1, "gamma": 0.5})
        self.client.register(s, {"w": np.zeros(1, np.float32)})
        lrs = [(r.lr, r.next_lr) for r in (self.client.step(s, {}) for _ in range(3))]
        self.assertEqual(lrs, [(1.0, 0.5), (0.5, 0.25), (0.25, 0.125)])
        hp = self.client.set_hparams(s, {"lr": 2.0})  # the schedule goes on from it
        self.assertEqual((hp.base_lr, hp.lr), (1.0, 2.0))
        r = self.client.step(s, {})
        self.assertEqual((r.lr, r.next_lr), (2.0, 1.0))

    def test_two_groups(self) -> None:
        s = self.open("groups", "sgd", {"lr": 0.5},
                      groups=[optimd.Group("head", {"lr": 0.25}), optimd.Group("frozen", {"lr": 0.0})])
        self.assertEqual(self.client.register(s, {"w": np.zeros(2, np.float32)}), 1)
        self.assertEqual(self.client.register(s, {"h": np.zeros(2, np.float32)}, group="head"), 1)
        info = self.client.info(s)
        self.assertEqual([(g.name, g.lr, g.params) for g in info.groups],
                         [("default", 0.5, 1), ("head", 0.25, 1), ("frozen", 0.0, 0)])
        self.assertEqual([(p.name, p.group) for p in info.params], [("w", "default"), ("h", "head")])
        self.assertEqual(info.group("head").hparams["lr"], 0.25)

        r = self.client.step(s, {"w": np.ones(2, np.float32), "h": np.ones(2, np.float32)})
        self.assertEqual(r.lrs, {"default": 0.5, "head": 0.25, "frozen": 0.0})
        self.assertEqual(r.next_lrs, r.lrs)
        self.assertEqual((r.group_lr("head"), r.grad_norm, r.grad_norms), (0.25, None, {}))
        np.testing.assert_array_equal(r.params["w"], [-0.5, -0.5])
        np.testing.assert_array_equal(r.params["h"], [-0.25, -0.25])

        hp = self.client.set_hparams(s, {"lr": 0.125}, group="head")
        self.assertEqual([g.lr for g in hp.groups], [0.5, 0.125, 0.0])
        hp = self.client.set_hparams(s, {"momentum": 0.5})  # every group
        self.assertEqual([g.hparams["momentum"] for g in hp.groups], [0.5, 0.5, 0.5])
        with self.assertRaises(optimd.BadRequestError) as caught:
            self.client.set_hparams(s, {"lr": 1.0}, group="nosuch")
        self.assertEqual((caught.exception.code, caught.exception.name), (2, "BAD_REQUEST"))
        with self.assertRaises(optimd.BadRequestError):
            self.client.register(s, {"x": np.zeros(1, np.float32)}, group="nosuch")

    def test_clipped_steps(self) -> None:
        s = self.open("clip", "sgd", {"lr": 1.0}, groups=[optimd.Group("b")])
        self.client.register(s, {"w": np.zeros(2, np.float64)})
        self.client.register(s, {"v": np.zeros(1, np.float64)}, group="b")
        # By norm: the 2-norm of [3, 4] and [12] is 13; scaled to norm 1.
        r = self.client.step(s, {"w": np.array([3.0, 4.0]), "v": np.array([12.0])}, clip_norm=1.0)
        self.assertEqual((r.grad_norm, r.grad_norms), (13.0, {}))
        coef = 1.0 / (13.0 + 1e-6)
        np.testing.assert_allclose(r.params["w"], [-3 * coef, -4 * coef], rtol=1e-15)
        np.testing.assert_allclose(r.params["v"], [-12 * coef], rtol=1e-15)
        # Per group: each group's own norm.
        r = self.client.step(s, {"w": np.array([3.0, 4.0]), "v": np.array([0.5])},
                             clip_norm=optimd.ClipNorm(100.0, per_group=True), return_params=False)
        self.assertEqual((r.grad_norm, r.grad_norms), (None, {"default": 5.0, "b": 0.5}))
        # The max norm.
        r = self.client.step(s, {"w": np.array([3.0, -4.0])}, clip_norm={"max_norm": 100.0, "norm_type": float("inf")})
        self.assertEqual(r.grad_norm, 4.0)
        # By value: clamped to [-2, 2] before an lr-1 SGD step.
        before = self.client.pull(s, ["w"])["w"]
        r = self.client.step(s, {"w": np.array([3.0, -0.5])}, clip_value=2.0)
        np.testing.assert_array_equal(r.params["w"], before - np.array([2.0, -0.5]))
        self.assertIsNone(r.grad_norm)
        with self.assertRaises(ValueError):
            self.client.step(s, {}, clip_value=0.0)

    def test_observe_with_plateau(self) -> None:
        s = self.open("plateau", "sgd", {"lr": 1.0}, scheduler="plateau",
                      sched_hparams={"patience": 0, "factor": 0.5},
                      groups=[optimd.Group("fixed", scheduler=None)])
        self.client.register(s, {"w": np.zeros(1, np.float32)})
        first = self.client.observe(s, 1.0)  # the best so far
        self.assertEqual((first.lr, first.lrs), (1.0, {"default": 1.0, "fixed": 1.0}))
        worse = self.client.observe(s, 2.0)  # a bad epoch with patience 0: halved
        self.assertEqual((worse.lr, worse.lrs), (0.5, {"default": 0.5, "fixed": 1.0}))
        r = self.client.step(s, {"w": np.ones(1, np.float32)})
        self.assertEqual(r.lr, 0.5)
        np.testing.assert_array_equal(r.params["w"], [-0.5])
        self.assertEqual(self.client.observe(s, 0.5, group="default").lr, 0.5)  # better: kept
        with self.assertRaises(optimd.BadRequestError):
            self.client.observe(s, 1.0, group="fixed")  # no metric scheduler there

    def test_state_export_import(self) -> None:
        s = self.open("exp", "adam", {"lr": 0.1})
        self.client.register(s, {"w": np.zeros(3, np.float32), "idle": np.zeros(1, np.float32)})
        g = np.array([1.0, -2.0, 0.5], np.float32)
        self.client.step(s, {"w": g})
        state = self.client.state(s)
        self.assertEqual(state["idle"], {})
        # After one Adam step from zero, exp_avg = (1 - beta1) g.
        np.testing.assert_array_equal(state["w"]["exp_avg"], np.float32(1 - 0.9) * g)
        self.assertEqual(set(self.client.state(s, ["w"])), {"w"})

        snapshot = self.client.export(s)
        self.assertIsInstance(snapshot, bytes)
        copy = self.client.import_session(snapshot, "exp-copy", durability="none")
        self.addCleanup(self.client.close_session, copy.session)
        self.assertEqual((copy.session.name, copy.steps), ("exp-copy", 1))
        self.assertNotEqual(copy.session.token, s.token)
        a = self.client.step(s, {"w": g})
        b = self.client.step(copy.session, {"w": g})
        np.testing.assert_array_equal(a.params["w"], b.params["w"])
        self.assertEqual(self.client.info(copy.session).durability, "none")
        with self.assertRaises(optimd.SessionExistsError):
            self.client.import_session(snapshot)  # the stored name, "exp", is taken
        with self.assertRaises(optimd.BadRequestError):
            self.client.import_session(b"not a snapshot", "junk")

    def test_lookahead_and_combined_schedule(self) -> None:
        s = self.open("combined", "sgd", {"lr": 1.0}, lookahead=optimd.Lookahead(k=2, alpha=0.5),
                      scheduler="sequential", milestones=[2],
                      schedulers=[optimd.Schedule("constant", {"factor": 0.5, "total_iters": 2}),
                                  optimd.Schedule("exponential", {"gamma": 0.5})])
        info = self.client.info(s)
        self.assertEqual(info.lookahead, optimd.Lookahead(2, 0.5))
        self.assertEqual((info.scheduler, info.milestones), ("sequential", (2,)))
        self.assertEqual([p.scheduler for p in info.schedulers], ["constant", "exponential"])
        self.assertEqual(info.groups[0].schedulers, info.schedulers)
        self.client.register(s, {"w": np.zeros(1, np.float64)})
        # constant 0.5 for two epochs, then exponential from the base lr, restarted.
        r = [self.client.step(s, {"w": np.ones(1)}) for _ in range(3)]
        self.assertEqual([x.lr for x in r], [0.5, 0.5, 1.0])
        # Lookahead (k=2, alpha=.5): after step 2 the weight is halfway from 0 to -1.
        self.assertEqual([float(x.params["w"][0]) for x in r], [-0.5, -0.5, -1.5])
        self.assertIn("lookahead_slow", self.client.state(s)["w"])
        plain = self.open("plain")
        self.assertIsNone(self.client.info(plain).lookahead)

    def test_raw_request_and_ids(self) -> None:
        reply = self.client.request("hello")
        first = reply["id"]
        self.assertEqual((reply["ok"], reply["v"]), (True, 1))
        self.assertEqual(self.client.request("sessions")["id"], first + 1)

    def test_many_threads_share_one_client(self) -> None:
        sessions = [self.open(f"thread{i}") for i in range(4)]
        for s in sessions:
            self.client.register(s, {"w": np.zeros(1000, np.float32)})
        errors: list[BaseException] = []

        def work(s: optimd.Session) -> None:
            try:
                for _ in range(25):
                    self.client.step(s, {"w": np.full(1000, -2.0, np.float32)})
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        for s in sessions:
            self.assertEqual(self.client.info(s).steps, 25)
            np.testing.assert_array_equal(self.client.pull(s)["w"], np.full(1000, 25.0, np.float32))

    def test_attach_from_a_second_client(self) -> None:
        s = self.open("shared")
        self.client.register(s, {"w": np.ones(2, np.float32)})
        with optimd.Client(self.daemon.url) as other:
            self.assertEqual(other.attach(s).params[0].name, "w")
            other.step(s, {"w": np.ones(2, np.float32)})
        self.assertEqual(self.client.info(s).steps, 1)


class SwitchAndAdmin(DaemonTestCase):
    ADMIN = "py-admin-token-for-the-test"
    DAEMON_ARGS = ("--admin-token", ADMIN)

    def setUp(self) -> None:
        self.client = optimd.Client(self.daemon.url, timeout=60)
        self.addCleanup(self.client.close)

    def test_switch_carries_the_momentum_buffer(self) -> None:
        s = self.client.open("switch", "sgd", {"lr": 0.1, "momentum": 0.9})
        self.addCleanup(self.client.close_session, s)
        self.client.register(s, {"w": np.linspace(-1, 1, 4).astype(np.float32)})
        for g in (0.5, 1.5):
            self.client.step(s, {"w": np.full(4, g, np.float32)})
        before = self.client.state(s)["w"]["momentum_buffer"]
        self.assertTrue(np.any(before != 0))  # else "unchanged" would prove nothing

        r = self.client.switch(s, "rmsprop")
        self.assertIsInstance(r, optimd.SwitchResult)
        self.assertEqual((r.optimizer, r.carried), ("rmsprop", ("momentum_buffer",)))
        self.assertRegex(r.optimizer_version, r"^\d+\.\d+")
        np.testing.assert_array_equal(self.client.state(s)["w"]["momentum_buffer"], before)
        info = self.client.info(s)
        self.assertEqual((info.optimizer, info.optimizer_version, info.steps), ("rmsprop", r.optimizer_version, 2))
        self.assertEqual(info.hparams["momentum"], 0.9)  # carried by key
        with self.assertRaises(optimd.UnknownPluginError):
            self.client.switch(s, "no-such-optimizer")

    def test_reload_needs_the_admin_token(self) -> None:
        loads = self.client.reload(self.ADMIN)
        self.assertIsInstance(loads, list)
        for entry in loads:
            self.assertIsInstance(entry, optimd.PluginLoad)
            self.assertEqual(entry.error is None, entry.loaded, entry)
        with self.assertRaises(optimd.BadTokenError) as caught:
            self.client.reload(self.ADMIN + "x")
        self.assertEqual(caught.exception.code, 21)
        with self.assertRaises(optimd.BadTokenError):
            self.client.load("/nonexistent/plugin.so", "wrong")
        with self.assertRaises(optimd.PluginError):
            self.client.load("/nonexistent/plugin.so", self.ADMIN)


class DropAndShutdown(DaemonTestCase):
    """A daemon of its own: the test ends it (tearDownClass then finds it
    exited, and its status must still be 0)."""

    ADMIN = "py-admin-token-for-drop"
    DAEMON_ARGS = ("--admin-token", ADMIN)

    def test_drop_then_shutdown(self) -> None:
        with optimd.Client(self.daemon.url, timeout=60) as client:
            s = client.open("dropme", "sgd", {"lr": 0.1})
            with self.assertRaises(optimd.BadTokenError):
                client.drop("dropme", self.ADMIN + "x")
            self.assertEqual(client.info(s).steps, 0)  # still there
            self.assertIsNone(client.drop("dropme", self.ADMIN))
            with self.assertRaises(optimd.UnknownSessionError):
                client.info(s)
            with self.assertRaises(optimd.UnknownSessionError):
                client.drop("dropme", self.ADMIN)
            with self.assertRaises(optimd.BadTokenError):
                client.shutdown("wrong")
            self.assertIsNone(self.daemon.proc.poll())
            self.assertIsNone(client.shutdown(self.ADMIN))
        # Bounded, so a daemon that ignores shutdown fails here.
        self.assertEqual(self.daemon.proc.wait(10), 0)


class Offline(unittest.TestCase):
    def test_request_fields_on_the_wire(self) -> None:
        def answer(request: bytes) -> bytes:
            msg = msgpack.unpackb(request)
            seen.append(msg)
            return msgpack.packb({"v": 1, "id": msg["id"], "ok": True, "session": "s", "token": "t" * 32, "lr": 0.1,
                                 "existing": False})

        seen: list[dict] = []
        with FakeServer(answer) as server, optimd.Client(server.url, timeout=10) as client:
            s = client.open("s", "adam", {"lr": np.float32(0.5)}, scheduler="cosine", sched_hparams={"T_max": 10})
            self.assertEqual(s, optimd.Session("s", "t" * 32))
            client.open("s", "adam")
        self.assertEqual(seen[0], {"v": 1, "id": seen[0]["id"], "op": "open", "session": "s", "optimizer": "adam",
                                   "hparams": {"lr": 0.5}, "scheduler": "cosine", "sched_hparams": {"T_max": 10}})
        self.assertEqual(seen[1], {"v": 1, "id": seen[0]["id"] + 1, "op": "open", "session": "s", "optimizer": "adam"})

    def test_bad_timeout(self) -> None:
        with self.assertRaises(ValueError):
            optimd.Client("tcp://127.0.0.1:1", timeout=0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
