"""optimd.Cluster against real daemons: one session spread over three
servers trains bit-identically to the same session on one; rendezvous
placement moves only what a new server takes over; a refusing server's
error comes back with its code and says which servers applied the step."""

from __future__ import annotations

import hashlib
import unittest

import numpy as np

import optimd

from support import DaemonsTestCase

SHAPES = {
    "embed.weight": ((17, 6), np.float32),
    "enc.0.weight": ((6, 6), np.float32),
    "enc.0.bias": ((6,), np.float32),
    "enc.1.weight": ((5, 6), np.float64),
    "enc.1.bias": ((5,), np.float64),
    "head.weight": ((1, 5), np.float32),
    "head.bias": ((1,), np.float32),
    "scale": ((), np.float32),
}
# Enough parameters that every one of three servers (on random ports) holds
# some: all 24 on two of them has probability 3 * (2/3)^24, about 2e-4.
SHAPES.update({f"blocks.{i}.gain": ((3,), np.float32) for i in range(16)})
HPARAMS = {"lr": 0.05, "weight_decay": 0.1, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6}
SCHED = {"step_size": 3, "gamma": 0.5}
STEPS = 10


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    return {n: rng.standard_normal(shape).astype(dt) for n, (shape, dt) in SHAPES.items()}


def gradients(rng: np.random.Generator, names) -> dict[str, np.ndarray]:
    return {n: rng.standard_normal(SHAPES[n][0]).astype(SHAPES[n][1]) for n in names}


def independent_placement(name: str, urls) -> str:
    # The README's rule, written out again so the test does not trust the
    # module for what it promises.
    def weight(url: str) -> int:
        return int.from_bytes(hashlib.blake2b((url + "\x00" + name).encode(), digest_size=8).digest(), "big")
    return max(urls, key=lambda u: (weight(u), u))


class ClusterTests(DaemonsTestCase):
    def cluster(self, daemons) -> optimd.Cluster:
        c = optimd.Cluster([d.url for d in daemons], timeout=60)
        self.addCleanup(c.close)
        return c

    def open(self, cluster: optimd.Cluster, name: str) -> optimd.ClusterSession:
        s = cluster.open(name, "adamw", HPARAMS, scheduler="step", sched_hparams=SCHED)
        self.addCleanup(cluster.close_session, s)
        return s

    def test_three_servers_train_as_one(self) -> None:
        three = self.cluster(self.daemons[:3])
        init = initial_params()
        owners = {three.placement(n) for n in SHAPES}
        self.assertEqual(owners, set(three.urls), "every server should hold a share of this model")

        # The reference: the same run through a plain Client on one daemon.
        ref_client = optimd.Client(self.daemons[3].url, timeout=60)
        self.addCleanup(ref_client.close)
        ref = ref_client.open("train", "adamw", HPARAMS, scheduler="step", sched_hparams=SCHED)
        self.addCleanup(ref_client.close_session, ref)
        ref_client.register(ref, init)

        s = self.open(three, "train")
        self.assertEqual(three.register(s, init), len(SHAPES))
        per_server = {url: {p.name for p in info.params} for url, info in three.info(s).items()}
        for url, names in per_server.items():
            self.assertEqual(names, {n for n in SHAPES if independent_placement(n, three.urls) == url})

        rng = np.random.default_rng(99)
        first_url = three.urls[0]
        for step in range(STEPS):
            if step == 4:
                # Only one server gets gradients: the others must step anyway,
                # or their schedules fall behind.
                names = [n for n in SHAPES if three.placement(n) == first_url]
            elif step == 7:
                names = [n for n in SHAPES if n != "embed.weight" and n != "scale"]
            else:
                names = list(SHAPES)
            grads = gradients(rng, names)
            got = three.step(s, grads)
            want = ref_client.step(ref, grads)
            self.assertEqual((got.steps, got.lr, got.next_lr), (want.steps, want.lr, want.next_lr))
            self.assertEqual({r.steps for r in got.results.values()}, {step + 1})
            # A step returns the parameters it updated.
            self.assertEqual(set(got.params), set(names))
            self.assertEqual(set(want.params), set(names))
            for n in names:
                self.assertEqual(got.params[n].dtype, want.params[n].dtype, n)
                self.assertEqual(got.params[n].tobytes(), want.params[n].tobytes(), f"{n} at step {step + 1}")

        final = three.pull(s)
        final_ref = ref_client.pull(ref)
        self.assertEqual(set(final), set(SHAPES))
        for n in SHAPES:
            self.assertEqual(final[n].shape, init[n].shape)
            self.assertEqual(final[n].tobytes(), final_ref[n].tobytes(), n)
            self.assertFalse(np.array_equal(final[n], init[n]), f"{n} never moved")
        some = ["head.bias", "enc.1.weight"]
        self.assertEqual(set(three.pull(s, some)), set(some))

        # And a one-server cluster is the reference too, global clipping
        # included (there is only one server to see every gradient).
        one = self.cluster(self.daemons[3:])
        s1 = self.open(one, "train1")
        one.register(s1, init)
        rng = np.random.default_rng(7)
        for _ in range(3):
            grads = gradients(rng, SHAPES)
            a = one.step(s1, grads, clip_norm=1.0)
            b = three.step(s, grads)
            self.assertIsNotNone(a.results[one.urls[0]].grad_norm)
        with self.assertRaises(ValueError):
            three.step(s, gradients(rng, SHAPES), clip_norm=1.0)
        self.assertEqual({i.steps for i in three.info(s).values()}, {STEPS + 3})
        self.assertEqual(b.steps, STEPS + 3)

    def test_sliced_steps_on_three_servers(self) -> None:
        three = self.cluster(self.daemons[:3])
        init = initial_params()
        ref_client = optimd.Client(self.daemons[3].url, timeout=60)
        self.addCleanup(ref_client.close)
        ref = ref_client.open("sliced-ref", "adamw", HPARAMS, scheduler="step", sched_hparams=SCHED)
        self.addCleanup(ref_client.close_session, ref)
        ref_client.register(ref, init)
        s = self.open(three, "sliced")
        three.register(s, init)
        rng = np.random.default_rng(5)
        for step in range(1, 5):
            grads = gradients(rng, SHAPES)
            got = three.step(s, grads, seq=step, client="c", part_elements=37, parts_in_flight=3)
            want = ref_client.step(ref, grads)
            self.assertEqual((got.steps, got.lr, got.next_lr), (want.steps, want.lr, want.next_lr))
            for n in SHAPES:
                self.assertEqual(got.params[n].tobytes(), want.params[n].tobytes(), f"{n} at step {step}")
        self.assertEqual({i.pending_step for i in three.info(s).values()}, {None})

    def test_adding_a_server_moves_only_what_it_takes_over(self) -> None:
        three = self.cluster(self.daemons[:3])
        four = self.cluster(self.daemons[:4])
        new = self.daemons[3].url
        names = [f"layer{i}.weight" for i in range(2000)]
        moved = 0
        for n in names:
            before, after = three.placement(n), four.placement(n)
            self.assertEqual(before, independent_placement(n, three.urls))
            self.assertEqual(after, independent_placement(n, four.urls))
            if before != after:
                self.assertEqual(after, new, n)
                moved += 1
        # Expected 1/4 of them; a placement that ignored the new server, or
        # reshuffled everything, is far outside this.
        self.assertGreater(moved, len(names) * 0.18)
        self.assertLess(moved, len(names) * 0.32)
        # Order of the URLs does not matter.
        shuffled = optimd.Cluster([d.url for d in reversed(self.daemons)], connect=False, timeout=5)
        self.addCleanup(shuffled.close)
        self.assertTrue(all(shuffled.placement(n) == four.placement(n) for n in names[:200]))

        # On live sessions: what the four-server cluster registers lands on
        # the servers its placement names, and only the new one gains.
        s3, s4 = self.open(three, "move3"), self.open(four, "move4")
        init = initial_params()
        three.register(s3, init)
        four.register(s4, init)
        held3 = {u: {p.name for p in i.params} for u, i in three.info(s3).items()}
        held4 = {u: {p.name for p in i.params} for u, i in four.info(s4).items()}
        for url in three.urls:
            self.assertLessEqual(held4[url], held3[url])
        self.assertEqual(set().union(*held4.values()), set(SHAPES))

    def test_parallel_steps(self) -> None:
        """parallel=True asks every server at once: the same results as one
        server, and a refusal lists every other server as applied."""
        three = optimd.Cluster([d.url for d in self.daemons[:3]], timeout=60, parallel=True)
        self.addCleanup(three.close)
        init = initial_params()
        s = self.open(three, "parallel")
        three.register(s, init)
        ref_client = optimd.Client(self.daemons[3].url, timeout=60)
        self.addCleanup(ref_client.close)
        ref = ref_client.open("parallel_ref", "adamw", HPARAMS, scheduler="step", sched_hparams=SCHED)
        self.addCleanup(ref_client.close_session, ref)
        ref_client.register(ref, init)
        rng = np.random.default_rng(5)
        for step in range(5):
            grads = gradients(rng, list(SHAPES))
            got, want = three.step(s, grads, seq=step + 1, client="p"), ref_client.step(ref, grads)
            self.assertEqual((got.steps, got.lr, got.next_lr), (want.steps, want.lr, want.next_lr))
            for n in SHAPES:
                self.assertEqual(got.params[n].tobytes(), want.params[n].tobytes(), f"{n} at step {step + 1}")
        middle = three.urls[1]
        bad_name = next(n for n in SHAPES if three.placement(n) == middle)
        bad = gradients(rng, list(SHAPES))
        bad[bad_name] = np.full(SHAPES[bad_name][0], np.nan, SHAPES[bad_name][1])
        with self.assertRaises(optimd.NonfiniteError) as caught:
            three.step(s, bad, seq=6, client="p")
        self.assertEqual(caught.exception.url, middle)
        self.assertEqual(caught.exception.applied, (three.urls[0], three.urls[2]))
        self.assertEqual({u: i.steps for u, i in three.info(s).items()},
                         {three.urls[0]: 6, middle: 5, three.urls[2]: 6})

    def test_refusing_server(self) -> None:
        three = self.cluster(self.daemons[:3])
        s = self.open(three, "refuse")
        init = initial_params()
        three.register(s, init)
        # NaN in a parameter of the middle server: the first applies, the
        # middle refuses, the last is never asked.
        middle = three.urls[1]
        bad_name = next(n for n in SHAPES if three.placement(n) == middle)
        grads = gradients(np.random.default_rng(3), SHAPES)
        bad = dict(grads)
        bad[bad_name] = np.full(SHAPES[bad_name][0], np.nan, SHAPES[bad_name][1])
        with self.assertRaises(optimd.NonfiniteError) as caught:
            three.step(s, bad, seq=1, client="w0")
        err = caught.exception
        self.assertEqual((err.code, err.name), (33, "NONFINITE"))
        self.assertEqual(err.url, middle)
        self.assertEqual(err.applied, (three.urls[0],))
        steps = {u: i.steps for u, i in three.info(s).items()}
        self.assertEqual(steps, {three.urls[0]: 1, middle: 0, three.urls[2]: 0})
        self.assertEqual(three.pull(s, [bad_name])[bad_name].tobytes(), init[bad_name].tobytes())

        # The same sequenced step again, now finite: applied only where it
        # was not.
        again = three.step(s, grads, seq=1, client="w0")
        self.assertTrue(again.results[three.urls[0]].duplicate)
        self.assertFalse(again.results[middle].duplicate)
        self.assertFalse(again.duplicate)
        self.assertEqual({u: i.steps for u, i in three.info(s).items()}, dict.fromkeys(three.urls, 1))

        # Opening a name one server already has: the others are undone.
        lone = optimd.Client(self.daemons[2].url, timeout=60)
        self.addCleanup(lone.close)
        taken = lone.open("taken", "sgd", {"lr": 0.1})
        self.addCleanup(lone.close_session, taken)
        with self.assertRaises(optimd.SessionExistsError) as caught2:
            three.open("taken", "sgd", {"lr": 0.1})
        self.assertEqual(caught2.exception.url, self.daemons[2].url)
        for d in self.daemons[:2]:
            with optimd.Client(d.url, timeout=60) as c:
                self.assertNotIn("taken", [e.session for e in c.sessions()])


if __name__ == "__main__":
    unittest.main(verbosity=2)
