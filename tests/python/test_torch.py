"""optimd.torch.RemoteOptimizer against torch.optim (Debian's torch 1.13.1):
bit-identical training, hyperparameter changes, schedulers (torch's and the
daemon's), per-group options, state dicts."""

from __future__ import annotations

import copy
import io
import unittest
from typing import Any, Callable

import torch

import optimd
from optimd.torch import RemoteOptimizer

from support import DaemonTestCase

STEPS = 30


def mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def data(seed: int = 1, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 8, generator=g, dtype=dtype), torch.randn(64, 3, generator=g, dtype=dtype)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = STEPS,
          sched: Any | None = None, on_step: Callable[[int], None] | None = None) -> list[float]:
    x, y = data(dtype=next(model.parameters()).dtype)
    losses = []
    for i in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if on_step is not None:
            on_step(i)
        losses.append(loss.item())
    return losses


class TorchTestCase(DaemonTestCase):
    def sessions(self) -> set[str]:
        with optimd.Client(self.daemon.url) as c:
            return {s.session for s in c.sessions()}

    def remote(self, params: Any, optimizer: str, **kwargs: Any) -> RemoteOptimizer:
        opt = RemoteOptimizer(params, optimizer, server=self.daemon.url, **kwargs)
        self.addCleanup(opt.close)
        self.addCleanup(opt.delete_sessions)
        return opt

    def assertSameParams(self, a: torch.nn.Module, b: torch.nn.Module, when: str = "") -> None:
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            self.assertTrue(torch.equal(pa, pb), f"{name} differs{when}: max |d| {(pa - pb).abs().max().item()}")

    def assertParity(self, make_remote: Callable[[torch.nn.Module], Any],
                     make_torch: Callable[[torch.nn.Module], Any], dtype: torch.dtype = torch.float32,
                     steps: int = STEPS) -> tuple[Any, Any]:
        """Trains two copies of one model, one per optimizer (each maker
        returns an optimizer or (optimizer, scheduler)); asserts that the
        parameters are bit-identical after every step."""
        ours, theirs = mlp(dtype=dtype), mlp(dtype=dtype)
        made_ours, made_theirs = make_remote(ours), make_torch(theirs)
        opt_o, sched_o = made_ours if isinstance(made_ours, tuple) else (made_ours, None)
        opt_t, sched_t = made_theirs if isinstance(made_theirs, tuple) else (made_theirs, None)
        x, y = data(dtype=dtype)
        for step in range(steps):
            for model, opt, sched in ((ours, opt_o, sched_o), (theirs, opt_t, sched_t)):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                if sched is not None:
                    sched.step()
            when = f" after step {step + 1}"
            self.assertSameParams(ours, theirs, when)
            self.assertEqual([g["lr"] for g in opt_o.param_groups], [g["lr"] for g in opt_t.param_groups], when)
        return opt_o, opt_t


class Parity(TorchTestCase):
    def test_adamw(self) -> None:
        self.assertParity(
            lambda m: self.remote(m.parameters(), "adamw", lr=1e-2, weight_decay=0.1),
            lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1, foreach=False))

    def test_adamw_in_parts(self) -> None:
        # 13 elements a part: the 8x16 weight is cut across parts, and each
        # part carries pieces of up to three tensors.
        opt, _ = self.assertParity(
            lambda m: self.remote(m.parameters(), "adamw", lr=1e-2, weight_decay=0.1, part_elements=13),
            lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1, foreach=False), steps=8)
        with optimd.Client(self.daemon.url) as c:
            info = c.info(opt._remotes[0].session, client=RemoteOptimizer.SEQ_CLIENT)
        self.assertEqual((info.steps, info.client_seq, info.pending_step), (8, 8, None))

    def test_parts_need_an_element_wise_optimizer(self) -> None:
        with self.assertRaisesRegex(ValueError, "sliced"):
            RemoteOptimizer(mlp().parameters(), "lamb", server=self.daemon.url, part_elements=100)

    def test_a_step_left_pending_is_abandoned_by_the_next_optimizer(self) -> None:
        model = mlp()
        opt = self.remote(model.parameters(), "adamw", lr=1e-2, part_elements=50)
        train(model, opt, steps=2)
        session = opt._remotes[0].session
        with optimd.Client(self.daemon.url) as c:
            # A step whose sender died after its first part.
            c.step_part(session, {"0.0": (0, torch.ones(10).numpy())}, index=0, count=3, seq=3,
                        client=RemoteOptimizer.SEQ_CLIENT)
            self.assertIsNotNone(c.info(session).pending_step)
        opt._remotes[0].seq = None     # as a new optimizer on the session would start
        with self.assertWarnsRegex(UserWarning, "abandoning sliced step 3, left with 1 of 3 parts"):
            train(model, opt, steps=1)
        with optimd.Client(self.daemon.url) as c:
            info = c.info(session, client=RemoteOptimizer.SEQ_CLIENT)
        self.assertEqual((info.steps, info.client_seq, info.pending_step), (4, 4, None))

    def test_adamw_with_betas_and_amsgrad(self) -> None:
        self.assertParity(
            lambda m: self.remote(m.parameters(), "adamw", lr=3e-3, betas=(0.8, 0.99), eps=1e-6,
                                  weight_decay=0.05, amsgrad=True),
            lambda m: torch.optim.AdamW(m.parameters(), lr=3e-3, betas=(0.8, 0.99), eps=1e-6,
                                        weight_decay=0.05, amsgrad=True, foreach=False))

    def test_sgd_momentum_dampening_with_torch_step_lr(self) -> None:
        def ours(m: torch.nn.Module) -> tuple[Any, Any]:
            opt = self.remote(m.parameters(), "sgd", lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3)
            return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)

        def theirs(m: torch.nn.Module) -> tuple[Any, Any]:
            opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3,
                                  foreach=False)
            return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)

        opt, _ = self.assertParity(ours, theirs)
        # The lr really changed on the daemon: 30 steps, halved at 7, 14, 21, 28.
        self.assertEqual(opt.client.hparams(opt.sessions[0]).lr, 0.1 * 0.5 ** 4)

    def test_sgd_nesterov_with_torch_cosine(self) -> None:
        def ours(m: torch.nn.Module) -> tuple[Any, Any]:
            opt = self.remote(m.parameters(), "sgd", lr=0.05, momentum=0.8, nesterov=True)
            return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.001)

        def theirs(m: torch.nn.Module) -> tuple[Any, Any]:
            opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.8, nesterov=True, foreach=False)
            return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.001)

        self.assertParity(ours, theirs)

    def test_server_side_step_scheduler(self) -> None:
        def theirs(m: torch.nn.Module) -> tuple[Any, Any]:
            opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, foreach=False)
            return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)

        self.assertParity(
            lambda m: self.remote(m.parameters(), "sgd", lr=0.1, momentum=0.9,
                                  scheduler="step", sched_hparams={"step_size": 4, "gamma": 0.5}),
            theirs)

    def test_adam_float64(self) -> None:
        self.assertParity(
            lambda m: self.remote(m.parameters(), "adam", lr=1e-2, weight_decay=1e-2),
            lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-2, foreach=False),
            dtype=torch.float64)

    def test_per_group_options(self) -> None:
        def groups(m: torch.nn.Module, **first: Any) -> list[dict[str, Any]]:
            return [{"params": m[0].parameters(), **first}, {"params": m[2].parameters()}]

        opt, _ = self.assertParity(
            lambda m: self.remote(groups(m, lr=1e-3, weight_decay=0.0), "adamw", lr=1e-2, weight_decay=0.1),
            lambda m: torch.optim.AdamW(groups(m, lr=1e-3, weight_decay=0.0), lr=1e-2, weight_decay=0.1,
                                        foreach=False))
        # One session; torch's groups are its groups.
        self.assertEqual(len(opt.sessions), 1)
        hp = opt.client.hparams(opt.sessions[0])
        self.assertEqual([(g.name, g.lr, g.hparams["weight_decay"], g.params) for g in hp.groups],
                         [("default", 1e-3, 0.0, 2), ("g1", 1e-2, 0.1, 2)])
        self.assertEqual(opt.group_session(1), (opt.sessions[0], "g1"))

    def test_two_groups_with_torch_step_lr(self) -> None:
        """Two groups (no weight decay and a lower lr on the first), torch's
        StepLR changing both groups' lr between steps."""
        def groups(m: torch.nn.Module) -> list[dict[str, Any]]:
            return [{"params": m[0].parameters(), "lr": 3e-3, "weight_decay": 0.0}, {"params": m[2].parameters()}]

        def ours(m: torch.nn.Module) -> tuple[Any, Any]:
            opt = self.remote(groups(m), "adamw", lr=1e-2, weight_decay=0.05)
            return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=6, gamma=0.5)

        def theirs(m: torch.nn.Module) -> tuple[Any, Any]:
            opt = torch.optim.AdamW(groups(m), lr=1e-2, weight_decay=0.05, foreach=False)
            return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=6, gamma=0.5)

        opt, _ = self.assertParity(ours, theirs, steps=20)
        # The daemon's lrs moved: 20 steps, halved at 6, 12, 18.
        hp = opt.client.hparams(opt.sessions[0])
        self.assertEqual([g.lr for g in hp.groups], [3e-3 * 0.5 ** 3, 1e-2 * 0.5 ** 3])

    def test_server_side_scheduler_per_group(self) -> None:
        def groups(m: torch.nn.Module) -> list[dict[str, Any]]:
            return [{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 0.02}]

        def theirs(m: torch.nn.Module) -> tuple[Any, Any]:
            opt = torch.optim.SGD(groups(m), lr=0.1, momentum=0.9, foreach=False)
            return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

        self.assertParity(
            lambda m: self.remote(groups(m), "sgd", lr=0.1, momentum=0.9,
                                  scheduler="step", sched_hparams={"step_size": 3, "gamma": 0.5}),
            theirs, steps=10)


class Behaviour(TorchTestCase):
    def test_param_groups_show_every_hyperparameter(self) -> None:
        model = mlp()
        opt = self.remote(model.parameters(), "adam", lr=1)  # an int, as torch allows
        group = opt.param_groups[0]
        self.assertEqual(
            {k: v for k, v in group.items() if k != "params"},
            {"lr": 1.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
             "maximize": False})
        self.assertEqual(opt.defaults["lr"], 1)
        self.assertIn("sgd", repr(self.remote(mlp().parameters(), "sgd", lr=0.1).optimizer_id))

    def test_lr_assignment_reaches_the_daemon_before_the_next_step(self) -> None:
        model = mlp()
        opt = self.remote(model.parameters(), "sgd", lr=0.1)
        train(model, opt, steps=1)
        opt.param_groups[0]["lr"] = 0.025
        opt.param_groups[0]["momentum"] = 0.5
        session = opt.sessions[0]
        self.assertEqual(opt.client.hparams(session).lr, 0.1)  # not before the step
        train(model, opt, steps=1)
        hp = opt.client.hparams(session)
        self.assertEqual((hp.lr, hp.hparams["momentum"]), (0.025, 0.5))

    def test_fixed_hyperparameter_cannot_change(self) -> None:
        model = mlp()
        opt = self.remote(model.parameters(), "sgd", lr=0.1, momentum=0.9)
        opt.param_groups[0]["nesterov"] = True
        with self.assertRaises(optimd.NotMutableError):
            train(model, opt, steps=1)

    def test_required_and_unknown_hyperparameters(self) -> None:
        before = self.sessions()
        with self.assertRaisesRegex(ValueError, "lr"):  # sgd's lr has no default
            self.remote(mlp().parameters(), "sgd")
        with self.assertRaises(optimd.UnknownHparamError):
            self.remote(mlp().parameters(), "adam", lr=0.1, weight_decy=0.1)
        with self.assertRaises(optimd.BadHparamError):  # the second group's session fails to open
            m = mlp()
            self.remote([{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": -1.0}], "adam")
        with self.assertRaises(optimd.BadHparamError):  # a group added later is checked too
            opt = self.remote(mlp().parameters(), "adam", lr=0.1)
            opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": -1.0})
        self.assertEqual(len(opt.param_groups), 1)
        opt.delete_sessions()
        with self.assertRaises(optimd.UnknownPluginError):
            self.remote(mlp().parameters(), "nosuch", lr=0.1)
        with self.assertRaises(TypeError):
            self.remote(mlp(dtype=torch.float16).parameters(), "adam")
        self.assertEqual(self.sessions(), before)  # nothing left behind

    def test_extra_group_keys_stay_client_side(self) -> None:
        m = mlp()
        opt = self.remote([{"params": m.parameters(), "name": "all"}], "adam", lr=0.01)
        train(m, opt, steps=2)
        self.assertEqual(opt.param_groups[0]["name"], "all")

    def test_closure_and_missing_grads(self) -> None:
        m = mlp()
        frozen = m[0].bias.detach().clone()
        opt = self.remote(m.parameters(), "sgd", lr=0.1)
        x, y = data()
        calls = []

        def closure() -> torch.Tensor:
            calls.append(1)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            m[0].bias.grad = None  # as if it took no part
            return loss

        before = m[2].weight.detach().clone()
        loss = opt.step(closure)
        self.assertEqual(len(calls), 1)
        self.assertIsInstance(loss, torch.Tensor)
        self.assertTrue(torch.equal(m[0].bias, frozen))
        self.assertFalse(torch.equal(m[2].weight, before))
        info = opt.client.info(opt.sessions[0])
        self.assertEqual([p.steps for p in info.params], [1, 0, 1, 1])

    def test_step_writes_in_place(self) -> None:
        m = mlp()
        weight = m[0].weight
        storage = weight.data_ptr()
        opt = self.remote(m.parameters(), "sgd", lr=0.1)
        train(m, opt, steps=2)
        self.assertIs(m[0].weight, weight)
        self.assertEqual(weight.data_ptr(), storage)

    def test_in_place_change_outside_step_is_refused(self) -> None:
        m = mlp()
        opt = self.remote(m.parameters(), "sgd", lr=0.1)
        train(m, opt, steps=1)
        with torch.no_grad():
            m[2].bias.add_(1.0)
        with self.assertRaisesRegex(RuntimeError, "modified in place outside step"):
            train(m, opt, steps=1)

    def test_add_param_group_later(self) -> None:
        ours, theirs = mlp(), mlp()
        opt_o = self.remote(ours[0].parameters(), "adam", lr=0.01)
        opt_t = torch.optim.Adam(theirs[0].parameters(), lr=0.01, foreach=False)
        for model, opt in ((ours, opt_o), (theirs, opt_t)):
            train(model, opt, steps=3)
            opt.add_param_group({"params": model[2].parameters(), "lr": 0.001})
            train(model, opt, steps=3)
        self.assertSameParams(ours, theirs)
        self.assertEqual(len(opt_o.sessions), 2)  # the first had parameters: a new session

    def test_add_param_group_before_the_first_step(self) -> None:
        ours, theirs = mlp(), mlp()
        opt_o = self.remote(ours[0].parameters(), "adam", lr=0.01, session="torch-before")
        opt_t = torch.optim.Adam(theirs[0].parameters(), lr=0.01, foreach=False)
        for model, opt in ((ours, opt_o), (theirs, opt_t)):
            opt.add_param_group({"params": model[2].parameters(), "lr": 0.001})
            train(model, opt, steps=3)
        self.assertSameParams(ours, theirs)
        # Reopened with both groups, under the same name.
        self.assertEqual([s.name for s in opt_o.sessions], ["torch-before"])
        info = opt_o.client.info(opt_o.sessions[0])
        self.assertEqual([(g.name, g.lr, g.params) for g in info.groups], [("default", 0.01, 2), ("g1", 0.001, 2)])


class StateDicts(TorchTestCase):
    def two_groups(self, m: torch.nn.Module) -> list[dict[str, Any]]:
        return [{"params": m[0].parameters(), "weight_decay": 0.0}, {"params": m[2].parameters(), "lr": 3e-3}]

    def test_state_is_torchs(self) -> None:
        """state_dict()["state"] is read from the daemon and equals torch's
        own AdamW state, slot by slot, bit for bit."""
        ours, theirs = mlp(), mlp()
        opt_o = self.remote(self.two_groups(ours), "adamw", lr=1e-2)
        opt_t = torch.optim.AdamW(self.two_groups(theirs), lr=1e-2, foreach=False)
        train(ours, opt_o, steps=5)
        train(theirs, opt_t, steps=5)
        got, want = opt_o.state_dict(), opt_t.state_dict()
        self.assertEqual(sorted(got["state"]), sorted(want["state"]))
        self.assertEqual([g["params"] for g in got["param_groups"]], [g["params"] for g in want["param_groups"]])
        for index, slots in want["state"].items():
            # torch counts steps per parameter in the state; the daemon in info.params.
            self.assertEqual(set(got["state"][index]), set(slots) - {"step"})
            for key in ("exp_avg", "exp_avg_sq"):
                a, b = got["state"][index][key], slots[key]
                self.assertTrue(torch.equal(a.to(b.dtype), b) and a.shape == b.shape, f"{index} {key}: {a} != {b}")

    def test_round_trip_continues_bit_identically(self) -> None:
        reference = mlp()
        ref_opt = torch.optim.AdamW(self.two_groups(reference), lr=1e-2, foreach=False)
        ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=5, gamma=0.5)
        train(reference, ref_opt, steps=20, sched=ref_sched)

        model = mlp()
        opt = self.remote(self.two_groups(model), "adamw", lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        train(model, opt, steps=10, sched=sched)
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
        # The original goes on (and then disappears): the checkpoint does not depend on it.
        train(model, opt, steps=3, sched=sched)
        opt.delete_sessions()

        # A new process: new model, new optimizer (with its own fresh session), then load.
        buffer.seek(0)
        checkpoint = torch.load(buffer)
        model2 = mlp(seed=5)
        model2.load_state_dict(checkpoint["model"])
        opt2 = self.remote(self.two_groups(model2), "adamw", lr=1.0)
        fresh = opt2.sessions[0]
        sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=5, gamma=0.5)
        opt2.load_state_dict(checkpoint["opt"])
        sched2.load_state_dict(checkpoint["sched"])
        self.assertNotEqual(opt2.sessions, opt.sessions)
        self.assertEqual([g["lr"] for g in opt2.param_groups], [1e-2 * 0.5 ** 2, 3e-3 * 0.5 ** 2])
        with optimd.Client(self.daemon.url) as c:
            self.assertNotIn(fresh.name, [s.session for s in c.sessions()])  # never used: closed
            self.assertEqual(c.info(opt2.sessions[0]).steps, 10)
        train(model2, opt2, steps=10, sched=sched2)
        self.assertSameParams(model2, reference)

    def test_loading_needs_the_checkpoints_weights(self) -> None:
        model = mlp()
        opt = self.remote(model.parameters(), "sgd", lr=0.1, momentum=0.9)
        train(model, opt, steps=2)
        saved = opt.state_dict()
        other_model = mlp(seed=3)  # weights not loaded from the checkpoint
        other = self.remote(other_model.parameters(), "sgd", lr=0.1)
        other.load_state_dict(saved)
        self.addCleanup(other.delete_sessions)
        with self.assertRaisesRegex(RuntimeError, "differs from the value in the loaded"):
            train(other_model, other, steps=1)

    def test_refuses_what_it_cannot_restore(self) -> None:
        model = mlp()
        opt = self.remote(model.parameters(), "sgd", lr=0.1)
        train(model, opt, steps=2)
        saved = opt.state_dict()
        other = self.remote(mlp().parameters(), "sgd", lr=0.1)
        torch_opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
        with self.assertRaisesRegex(ValueError, "not a RemoteOptimizer state dict"):
            other.load_state_dict(torch_opt.state_dict())
        with self.assertRaisesRegex(ValueError, "optimizer"):
            self.remote(mlp().parameters(), "adam").load_state_dict(saved)
        with self.assertRaisesRegex(ValueError, "number of parameter groups"):
            m = mlp()
            self.remote([{"params": m[0].parameters()}, {"params": m[2].parameters()}], "sgd",
                        lr=0.1).load_state_dict(saved)
        before = self.sessions()
        wrong_shapes = self.remote([torch.zeros(4, 8), torch.zeros(16), torch.zeros(3, 16), torch.zeros(2)],
                                   "sgd", lr=0.1)
        with self.assertRaisesRegex(ValueError, r"parameter 0\.0 is f32\[16, 8\]"):
            wrong_shapes.load_state_dict(saved)
        after = self.sessions()
        self.assertEqual(after - before, {s.name for s in wrong_shapes.sessions})  # the import was undone
        corrupt = copy.deepcopy(saved)
        corrupt["optimd"]["sessions"][0]["snapshot"] = b"junk"
        with self.assertRaises(optimd.BadRequestError):
            other.load_state_dict(corrupt)
        train(mlp(), other, steps=1)  # still usable on its own session


if __name__ == "__main__":
    unittest.main(verbosity=2)
