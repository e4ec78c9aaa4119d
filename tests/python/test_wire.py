"""Tensors and messages: optimd.wire on its own, then numpy round trips
through the real daemon (register -> pull, step replies)."""

from __future__ import annotations

import unittest

import msgpack
import numpy as np

import optimd
from optimd import wire

from support import DaemonTestCase

SHAPES = [(), (0,), (1,), (5,), (2, 3), (3, 1, 2), (2, 0, 4), (1,) * 8, (2, 1, 2, 1, 2, 1, 2, 1)]
DTYPES = [np.float32, np.float64]


def sample(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    """Values that show up any byte-order or rounding slip: signs, -0.0,
    subnormals, large and small magnitudes."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape)).astype(dtype)
    flat = a.reshape(-1)
    if flat.size >= 3:
        flat[0], flat[1], flat[2] = -0.0, np.finfo(dtype).smallest_subnormal, np.finfo(dtype).max
    return a


class EncodeTensor(unittest.TestCase):
    def test_every_shape_and_dtype(self) -> None:
        for dtype in DTYPES:
            for shape in SHAPES:
                with self.subTest(dtype=dtype, shape=shape):
                    a = sample(shape, dtype)
                    t = wire.encode_tensor(a)
                    self.assertEqual(t["dtype"], {np.float32: "f32", np.float64: "f64"}[dtype])
                    self.assertEqual(t["shape"], list(shape))
                    self.assertEqual(bytes(t["data"]), a.astype(np.dtype(dtype).newbyteorder("<")).tobytes())

    def test_contiguous_input_is_not_copied(self) -> None:
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        data = wire.encode_tensor(a)["data"]
        self.assertTrue(np.shares_memory(np.frombuffer(data, np.uint8), a))

    def test_strided_and_big_endian_inputs_become_little_endian_row_major(self) -> None:
        a = np.arange(6, dtype=np.float64).reshape(2, 3)
        t = wire.encode_tensor(a.T)
        self.assertEqual(t["shape"], [3, 2])
        self.assertEqual(bytes(t["data"]), np.ascontiguousarray(a.T).tobytes())
        big = np.array([1.5, -2.25], dtype=">f4")
        self.assertEqual(bytes(wire.encode_tensor(big)["data"]), np.array([1.5, -2.25], "<f4").tobytes())

    def test_nested_lists_are_float64(self) -> None:
        t = wire.encode_tensor([[1.0, 2.0]])
        self.assertEqual((t["dtype"], t["shape"]), ("f64", [1, 2]))

    def test_other_dtypes_and_too_many_dims_are_refused(self) -> None:
        for bad in (np.zeros(2, np.int32), np.zeros(2, np.float16), np.zeros(2, np.complex64), [1, 2]):
            with self.subTest(dtype=np.asarray(bad).dtype), self.assertRaises(TypeError):
                wire.encode_tensor(bad)
        with self.assertRaises(ValueError):
            wire.encode_tensor(np.zeros((1,) * 9, np.float32))

    def test_packed_message_holds_bin_data(self) -> None:
        a = np.array([1.0, 2.0], np.float32)
        msg = msgpack.unpackb(wire.encode_request("register", 5, {"params": {"w": wire.encode_tensor(a)}}))
        self.assertEqual(msg["v"], 1)
        self.assertEqual(msg["id"], 5)
        self.assertEqual(msg["op"], "register")
        self.assertEqual(msg["params"]["w"], {"dtype": "f32", "shape": [2], "data": a.tobytes()})

    def test_numpy_scalars_pack_as_plain_values(self) -> None:
        msg = msgpack.unpackb(wire.encode_request("x", 1, {"h": {"lr": np.float32(0.5), "b": np.bool_(True)}}))
        self.assertEqual(msg["h"], {"lr": 0.5, "b": True})
        with self.assertRaises(TypeError):
            wire.encode_request("x", 1, {"h": object()})


class EncodeRequestParts(unittest.TestCase):
    def test_same_map_as_msgpack_with_large_tensors_aligned_and_not_copied(self) -> None:
        big = np.arange(wire.LARGE_BIN // 4 + 3, dtype=np.float32)
        just = np.zeros(wire.LARGE_BIN // 8, np.float64)          # exactly LARGE_BIN bytes
        below = np.ones(wire.LARGE_BIN // 4 - 1, np.float32)
        many = {f"t{i}": wire.encode_tensor(np.full(3, i, np.float32)) for i in range(20)}   # map16
        cases = [
            {},
            {"session": "s", "token": "0" * 32, "grads": {"w": wire.encode_tensor(big)}},
            {"grads": {"a": wire.encode_tensor(below), "b": wire.encode_tensor(just),
                       "c": wire.encode_tensor(big)}, "seq": 2 ** 40, "client": "é", "return": False,
             "clip_norm": {"max_norm": 1.5, "norm_type": 2.0}, "h": {"lr": np.float32(0.25)}},
            {"params": many, "names": ["a", "b"], "raw": b"\x00" * wire.LARGE_BIN, "none": None},
        ]
        for extra in range(8):       # shifts every offset: every padding length comes up
            for fields in cases:
                fields = dict(fields, client="x" * extra)
                with self.subTest(keys=sorted(fields), extra=extra):
                    parts = wire.encode_request_parts("step", 77, fields)
                    message = b"".join(bytes(p) for p in parts)
                    self.assertEqual(message, wire.encode_request("step", 77, fields))
                    # The map msgpack itself writes, plus a pad key in each
                    # tensor map whose data is large.
                    want = msgpack.unpackb(msgpack.packb({"v": 1, "id": 77, "op": "step", **fields},
                                                         use_bin_type=True, default=lambda o: o.item()))
                    got = msgpack.unpackb(message)
                    for tensors in (got.get("grads", {}), got.get("params", {})):
                        for t in tensors.values():
                            if len(t["data"]) >= wire.LARGE_BIN:
                                self.assertEqual(set(t["pad"]), set() if not t["pad"] else {0})
                                del t["pad"]
                            self.assertNotIn("pad", t)
                    self.assertEqual(got, want)
                    # Each large tensor sits where 4 + its offset is a
                    # multiple of 16, and is the caller's own memory.
                    offset = 0
                    for p in parts:
                        if isinstance(p, memoryview) and "raw" not in fields:
                            self.assertEqual((4 + offset) % 16, 0, offset)
                        offset += memoryview(p).nbytes
        parts = wire.encode_request_parts("step", 1, cases[2])
        large = [p for p in parts if isinstance(p, memoryview)]
        self.assertEqual(len(large), 2)              # just and big; below is packed with the rest
        self.assertTrue(np.shares_memory(np.frombuffer(large[0], np.uint8), just))
        self.assertTrue(np.shares_memory(np.frombuffer(large[1], np.uint8), big))


class DecodeTensor(unittest.TestCase):
    def test_round_trip_is_a_read_only_view(self) -> None:
        for dtype in DTYPES:
            for shape in SHAPES:
                with self.subTest(dtype=dtype, shape=shape):
                    a = sample(shape, dtype)
                    data = a.tobytes()
                    name = wire.encode_tensor(a)["dtype"]
                    b = wire.decode_tensor({"dtype": name, "shape": list(shape), "data": data})
                    self.assertEqual(b.shape, shape)
                    self.assertEqual(b.dtype, np.dtype(dtype))
                    self.assertEqual(b.tobytes(), data)
                    self.assertFalse(b.flags.writeable)
                    if b.size:
                        self.assertTrue(np.shares_memory(b, np.frombuffer(data, np.uint8)))

    def test_bad_tensor_maps_are_protocol_errors(self) -> None:
        good = {"dtype": "f32", "shape": [2], "data": b"\0" * 8}
        for change in (
            {"dtype": "f16"},
            {"shape": [3]},
            {"shape": [-1]},
            {"shape": [True, 2]},
            {"shape": [1] * 9},
            {"shape": "2"},
            {"data": "........"},
            {"data": b"\0" * 7},
        ):
            with self.subTest(change=change), self.assertRaises(optimd.ProtocolError):
                wire.decode_tensor({**good, **change})
        with self.assertRaises(optimd.ProtocolError):
            wire.decode_tensor([1.0])


class DecodeReply(unittest.TestCase):
    def reply(self, **fields: object) -> bytes:
        return msgpack.packb({"v": 1, "id": 7, "ok": True, **fields})

    def test_success_reply(self) -> None:
        self.assertEqual(wire.decode_reply(self.reply(x=1), 7)["x"], 1)

    def test_broken_replies(self) -> None:
        for data, request_id in (
            (b"\xc1", 7),  # never used in msgpack
            (msgpack.packb([1, 2]), 7),
            (self.reply(), 8),  # wrong id
            (msgpack.packb({"v": 2, "id": 7, "ok": True}), 7),
            (msgpack.packb({"v": 1, "id": 7}), 7),
            (msgpack.packb({"v": 1, "id": 7, "ok": False, "error": "X"}), 7),  # no code
        ):
            with self.subTest(data=data), self.assertRaises(optimd.ProtocolError):
                wire.decode_reply(data, request_id)

    def test_error_about_an_undecodable_request_may_carry_id_0(self) -> None:
        data = msgpack.packb({"v": 1, "id": 0, "ok": False, "code": 1, "error": "MALFORMED", "message": "m"})
        with self.assertRaises(optimd.MalformedError) as caught:
            wire.decode_reply(data, 9)
        self.assertEqual(caught.exception.request_id, 0)
        with self.assertRaises(optimd.ProtocolError):  # but a success never does
            wire.decode_reply(msgpack.packb({"v": 1, "id": 0, "ok": True}), 9)


class DaemonRoundTrip(DaemonTestCase):
    def setUp(self) -> None:
        self.client = optimd.Client(self.daemon.url, timeout=60)
        self.session = self.client.open(f"wire-{self._testMethodName}", "sgd", {"lr": 0.5})

    def tearDown(self) -> None:
        self.client.close_session(self.session)
        self.client.close()

    def test_register_then_pull_every_shape_and_dtype(self) -> None:
        params = {f"{np.dtype(d).name}{s}": sample(s, d, seed=i) for i, (d, s) in
                  enumerate((d, s) for d in DTYPES for s in SHAPES)}
        self.assertEqual(self.client.register(self.session, params), len(params))
        pulled = self.client.pull(self.session)
        self.assertEqual(set(pulled), set(params))
        for name, a in params.items():
            with self.subTest(name=name):
                b = pulled[name]
                self.assertEqual((b.shape, b.dtype), (a.shape, a.dtype))
                self.assertEqual(b.tobytes(), a.tobytes())
                self.assertFalse(b.flags.writeable)
        info = {p.name: p for p in self.client.info(self.session).params}
        self.assertEqual(info["float32()"].shape, ())
        self.assertEqual(info["float64(2, 0, 4)"].shape, (2, 0, 4))

    def test_step_reply_keeps_dtype_and_shape(self) -> None:
        # lr 0.5, grad 1: every new value is exact, w - 0.5.
        params = {
            "s": np.array(2.0, np.float32),
            "m": np.full((2, 3), 4.0, np.float64),
            "e": np.zeros((0, 2), np.float32),
        }
        self.client.register(self.session, params)
        grads = {k: np.ones_like(v) for k, v in params.items()}
        result = self.client.step(self.session, grads)
        self.assertEqual(set(result.params), set(params))
        for name, value in result.params.items():
            with self.subTest(name=name):
                self.assertEqual((value.shape, value.dtype), (params[name].shape, params[name].dtype))
                np.testing.assert_array_equal(value, params[name] - 0.5)

    def test_large_tensor_past_nng_default_receive_limit(self) -> None:
        # NNG refuses messages over 1 MiB unless recv-size-max is lifted.
        big = np.random.default_rng(1).standard_normal(3_000_000).astype(np.float32)
        self.client.register(self.session, {"big": big})
        result = self.client.step(self.session, {"big": np.zeros_like(big)})
        self.assertEqual(result.params["big"].tobytes(), big.tobytes())
        self.assertEqual(self.client.pull(self.session, ["big"])["big"].tobytes(), big.tobytes())

    def test_torch_style_inputs(self) -> None:
        # Anything numpy.asarray accepts: here a transposed view and a list.
        w = np.arange(6, dtype=np.float32).reshape(2, 3)
        self.client.register(self.session, {"wt": w.T, "l": [1.0, 2.0]})
        pulled = self.client.pull(self.session)
        np.testing.assert_array_equal(pulled["wt"], w.T)
        self.assertEqual(pulled["l"].dtype, np.float64)


if __name__ == "__main__":
    unittest.main(verbosity=2)
