"""Every protocol error code maps to its exception class: the table against
sdk/include/optimd/protocol.h, each code provoked from the real daemon where
a client can provoke it, every code through a fake server, and transport
failures as their own family."""

from __future__ import annotations

import os
import pickle
import re
import time
import unittest

import msgpack
import numpy as np
import pynng

import optimd
from optimd import wire

from support import DaemonTestCase, FakeServer

# docs/protocol.md §6 and sdk/include/optimd/protocol.h, written out here so
# that the test checks the client's table rather than restating it.
EXPECTED = {
    1: ("MALFORMED", optimd.MalformedError),
    2: ("BAD_REQUEST", optimd.BadRequestError),
    3: ("UNKNOWN_OP", optimd.UnknownOpError),
    4: ("VERSION", optimd.VersionError),
    5: ("TOO_LARGE", optimd.TooLargeError),
    10: ("UNKNOWN_PLUGIN", optimd.UnknownPluginError),
    11: ("WRONG_KIND", optimd.WrongKindError),
    12: ("UNKNOWN_HPARAM", optimd.UnknownHparamError),
    13: ("BAD_HPARAM", optimd.BadHparamError),
    14: ("NOT_MUTABLE", optimd.NotMutableError),
    20: ("UNKNOWN_SESSION", optimd.UnknownSessionError),
    21: ("BAD_TOKEN", optimd.BadTokenError),
    22: ("SESSION_EXISTS", optimd.SessionExistsError),
    23: ("LIMIT", optimd.LimitError),
    24: ("UNKNOWN_WORKER", optimd.UnknownWorkerError),
    25: ("TIMEOUT", optimd.WorkerTimeoutError),
    26: ("STEP_PENDING", optimd.StepPendingError),
    30: ("UNKNOWN_PARAM", optimd.UnknownParamError),
    31: ("PARAM_EXISTS", optimd.ParamExistsError),
    32: ("BAD_TENSOR", optimd.BadTensorError),
    33: ("NONFINITE", optimd.NonfiniteError),
    40: ("PLUGIN", optimd.PluginError),
    50: ("INTERNAL", optimd.InternalError),
    51: ("NOMEM", optimd.NoMemoryError),
    52: ("SHUTTING_DOWN", optimd.ShuttingDownError),
    53: ("STORAGE", optimd.StorageError),
}


def header_codes() -> dict[int, str]:
    """code -> name from the C header's optimd_error_code_name()."""
    path = os.path.join(os.environ["OPTIMD_SOURCE_DIR"], "sdk/include/optimd/protocol.h")
    with open(path) as f:
        text = f.read()
    values = {m[0]: int(m[1]) for m in re.findall(r"(OPTIMD_E_\w+)\s*=\s*(\d+)", text)}
    names = dict(re.findall(r'case (OPTIMD_E_\w+): return "(\w+)";', text))
    return {values[k]: names[k] for k in values}


class Table(unittest.TestCase):
    def test_matches_protocol_md(self) -> None:
        self.assertEqual(set(optimd.ERROR_CLASSES), set(EXPECTED))
        for code, (name, cls) in EXPECTED.items():
            with self.subTest(code=code):
                self.assertIs(optimd.ERROR_CLASSES[code], cls)
                self.assertEqual(cls.CODE, code)
                self.assertTrue(issubclass(cls, optimd.OptimdError))
                self.assertFalse(issubclass(cls, optimd.TransportError))
                self.assertIn(name, cls.__doc__ or "")

    def test_matches_the_c_header(self) -> None:
        self.assertEqual(header_codes(), {code: name for code, (name, _) in EXPECTED.items()})

    def test_unknown_code_is_the_base_class(self) -> None:
        err = optimd.errors.error_from_reply(99, "NEW_THING", "later protocol", 4)
        self.assertIs(type(err), optimd.OptimdError)
        self.assertEqual((err.code, err.name, err.message, err.request_id), (99, "NEW_THING", "later protocol", 4))
        self.assertEqual(str(err), "NEW_THING: later protocol")

    def test_errors_pickle(self) -> None:
        err = optimd.BadTokenError(21, "BAD_TOKEN", "wrong token", 3)
        back = pickle.loads(pickle.dumps(err))
        self.assertIs(type(back), optimd.BadTokenError)
        self.assertEqual((back.code, back.name, back.message, back.request_id), (21, "BAD_TOKEN", "wrong token", 3))

    def test_transport_family(self) -> None:
        self.assertFalse(issubclass(optimd.TransportError, optimd.OptimdError))
        self.assertTrue(issubclass(optimd.RequestTimeout, optimd.TransportError))
        self.assertTrue(issubclass(optimd.RequestTimeout, TimeoutError))
        self.assertTrue(issubclass(optimd.ProtocolError, optimd.TransportError))


class EveryCodeThroughTheClient(unittest.TestCase):
    """A fake server answers each request with an error reply of the code
    the test chose; the client must raise that code's class."""

    def test_every_code(self) -> None:
        code = [0]

        def answer(request: bytes) -> bytes:
            rid = msgpack.unpackb(request)["id"]
            name = EXPECTED.get(code[0], ("FUTURE",))[0]
            return msgpack.packb({"v": 1, "id": rid, "ok": False, "code": code[0], "error": name,
                                  "message": f"text {code[0]}"})

        with FakeServer(answer) as server, optimd.Client(server.url, timeout=10) as client:
            for code[0] in [*EXPECTED, 77]:
                name, cls = EXPECTED.get(code[0], ("FUTURE", optimd.OptimdError))
                with self.subTest(code=code[0]):
                    with self.assertRaises(optimd.OptimdError) as caught:
                        client.hello()
                    err = caught.exception
                    self.assertIs(type(err), cls)
                    self.assertEqual((err.code, err.name, err.message), (code[0], name, f"text {code[0]}"))
                    self.assertGreater(err.request_id, 0)


class FromTheDaemon(DaemonTestCase):
    """Each code a client can provoke, provoked from the real daemon; and
    each time the failed request changed nothing."""

    DAEMON_ARGS = ("--max-message", "65536", "--max-sessions", "4")

    def setUp(self) -> None:
        self.client = optimd.Client(self.daemon.url, timeout=60)
        self.session = self.client.open(f"err-{self._testMethodName}", "sgd", {"lr": 0.1})
        self.client.register(self.session, {"w": np.ones(4, np.float32)})

    def tearDown(self) -> None:
        self.client.close_session(self.session)
        self.client.close()

    def assertCode(self, cls: type[optimd.OptimdError], call, *args, **kwargs) -> optimd.OptimdError:
        with self.assertRaises(cls) as caught:
            call(*args, **kwargs)
        err = caught.exception
        self.assertIs(type(err), cls)
        self.assertEqual((err.code, err.name), (cls.CODE, EXPECTED[cls.CODE][0]))
        self.assertTrue(err.message)
        return err

    def raw(self, payload: bytes) -> dict:
        """Sends bytes the client would never send; decodes the reply."""
        with pynng.Req0(dial=self.daemon.url, recv_timeout=30000, send_timeout=30000) as sock:
            sock.send(payload)
            return wire.decode_reply(sock.recv(), 0)

    def unchanged(self) -> None:
        info = self.client.info(self.session)
        self.assertEqual(info.steps, 0)
        self.assertEqual([p.name for p in info.params], ["w"])
        np.testing.assert_array_equal(self.client.pull(self.session)["w"], np.ones(4, np.float32))

    def test_malformed(self) -> None:
        err = self.assertCode(optimd.MalformedError, self.raw, msgpack.packb([1, 2, 3]))
        self.assertEqual(err.request_id, 0)

    def test_bad_request(self) -> None:
        self.assertCode(optimd.BadRequestError, self.client.request, "open", optimizer="sgd")
        self.assertCode(optimd.BadRequestError, self.client.request, "step", session=self.session.name,
                        token=self.session.token, grads=[1, 2])

    def test_unknown_op(self) -> None:
        self.assertCode(optimd.UnknownOpError, self.client.request, "frobnicate")

    def test_version(self) -> None:
        self.assertCode(optimd.VersionError, self.raw, msgpack.packb({"v": 2, "id": 0, "op": "hello"}))

    def test_too_large(self) -> None:
        # Over --max-message but under twice it: answered, not dropped.
        big = np.zeros(100_000 // 4, np.float32)
        self.assertCode(optimd.TooLargeError, self.client.register, self.session, {"big": big})
        self.unchanged()

    def test_unknown_plugin_and_wrong_kind(self) -> None:
        self.assertCode(optimd.UnknownPluginError, self.client.open, "e1", "nosuch")
        self.assertCode(optimd.WrongKindError, self.client.open, "e1", "cosine")
        self.assertCode(optimd.WrongKindError, self.client.open, "e1", "sgd", {"lr": 0.1}, scheduler="adam")
        self.assertNotIn("e1", [s.session for s in self.client.sessions()])

    def test_hyperparameters(self) -> None:
        self.assertCode(optimd.UnknownHparamError, self.client.open, "e2", "sgd", {"lr": 0.1, "lr2": 1.0})
        self.assertCode(optimd.BadHparamError, self.client.open, "e2", "sgd", {"lr": -1.0})
        self.assertCode(optimd.BadHparamError, self.client.open, "e2", "sgd", {})  # lr is required
        self.assertCode(optimd.BadHparamError, self.client.open, "e2", "sgd", {"lr": 0.1, "nesterov": True})
        self.assertCode(optimd.BadHparamError, self.client.open, "e2", "sgd", {"lr": 0.1}, scheduler="step")
        self.assertCode(optimd.NotMutableError, self.client.set_hparams, self.session, {"nesterov": True})
        self.assertCode(optimd.NotMutableError, self.client.set_hparams, self.session, {"lr": 0.5, "maximize": True})
        self.assertEqual(self.client.hparams(self.session).lr, 0.1)  # all or nothing
        self.assertCode(optimd.BadHparamError, self.client.set_hparams, self.session, {"momentum": "high"})
        self.assertNotIn("e2", [s.session for s in self.client.sessions()])
        self.unchanged()

    def test_sessions(self) -> None:
        self.assertCode(optimd.UnknownSessionError, self.client.info, optimd.Session("nobody", "0" * 32))
        wrong = optimd.Session(self.session.name, "f" * 32 if self.session.token != "f" * 32 else "e" * 32)
        for op in (self.client.info, self.client.attach, self.client.hparams, self.client.close_session,
                   self.client.pull):
            with self.subTest(op=op.__name__):
                self.assertCode(optimd.BadTokenError, op, wrong)
        self.assertCode(optimd.BadTokenError, self.client.step, wrong, {"w": np.ones(4, np.float32)})
        self.assertCode(optimd.BadTokenError, self.client.request, "info", session=self.session.name)
        self.assertCode(optimd.SessionExistsError, self.client.open, self.session.name, "adam")
        self.unchanged()

    def test_limit(self) -> None:
        opened = []
        try:
            with self.assertRaises(optimd.LimitError) as caught:
                for i in range(5):  # the daemon allows 4, one is ours
                    opened.append(self.client.open(f"limit{i}", "adam"))
            self.assertEqual(caught.exception.code, 23)
            self.assertEqual(len(opened), 3)
        finally:
            for s in opened:
                self.client.close_session(s)

    def test_parameters(self) -> None:
        self.assertCode(optimd.UnknownParamError, self.client.pull, self.session, ["w", "v"])
        self.assertCode(optimd.UnknownParamError, self.client.step, self.session, {"v": np.ones(4, np.float32)})
        self.assertCode(optimd.ParamExistsError, self.client.register, self.session,
                        {"v": np.ones(1, np.float32), "w": np.ones(4, np.float32)})
        self.assertCode(optimd.BadTensorError, self.client.step, self.session, {"w": np.ones(4, np.float64)})
        self.assertCode(optimd.BadTensorError, self.client.step, self.session, {"w": np.ones((2, 2), np.float32)})
        self.assertCode(optimd.BadTensorError, self.client.request, "register", session=self.session.name,
                        token=self.session.token, params={"v": {"dtype": "f32", "shape": [2], "data": b"\0" * 4}})
        for bad in (np.nan, np.inf, -np.inf):
            with self.subTest(value=bad):
                self.assertCode(optimd.NonfiniteError, self.client.step, self.session,
                                {"w": np.array([0, bad, 0, 0], np.float32)})
        self.unchanged()


class Transport(unittest.TestCase):
    def test_nothing_listening(self) -> None:
        with FakeServer(lambda _: None) as server:
            url = server.url
        start = time.monotonic()
        with self.assertRaises(optimd.TransportError) as caught:
            optimd.Client(url, timeout=30)
        self.assertNotIsInstance(caught.exception, optimd.OptimdError)
        self.assertLess(time.monotonic() - start, 10)

    def test_background_connect_times_out(self) -> None:
        with FakeServer(lambda _: None) as server:
            url = server.url
        with optimd.Client(url, timeout=0.3, connect=False) as client:
            with self.assertRaises(optimd.RequestTimeout):
                client.hello()

    def test_no_reply_times_out_and_is_sent_once(self) -> None:
        with FakeServer(lambda _: None) as server:
            with optimd.Client(server.url, timeout=0.5) as client:
                start = time.monotonic()
                with self.assertRaises(optimd.RequestTimeout):
                    client.request("step")
                self.assertGreaterEqual(time.monotonic() - start, 0.4)
            time.sleep(0.3)
            self.assertEqual(len(server.requests), 1)

    def test_resend_is_off(self) -> None:
        # protocol.md §1: REQ's resend (60 s by default) would apply a step twice.
        with FakeServer(lambda _: None) as server, optimd.Client(server.url) as client:
            self.assertEqual(client._transport.resend_time, -1)

    def test_invalid_replies_are_protocol_errors(self) -> None:
        replies = [b"\xc1", msgpack.packb("text"), msgpack.packb({"v": 1, "id": 12345, "ok": True})]
        with FakeServer(lambda _: replies.pop(0)) as server, optimd.Client(server.url, timeout=10) as client:
            for _ in range(3):
                with self.assertRaises(optimd.ProtocolError):
                    client.hello()

    def test_reply_missing_a_key(self) -> None:
        def answer(request: bytes) -> bytes:
            rid = msgpack.unpackb(request)["id"]
            return msgpack.packb({"v": 1, "id": rid, "ok": True, "server": "optimd"})

        with FakeServer(answer) as server, optimd.Client(server.url, timeout=10) as client:
            with self.assertRaisesRegex(optimd.ProtocolError, "no 'abi'"):
                client.hello()

    def test_closed_client(self) -> None:
        with FakeServer(lambda _: None) as server:
            client = optimd.Client(server.url)
            client.close()
            with self.assertRaises(optimd.TransportError):
                client.hello()


if __name__ == "__main__":
    unittest.main(verbosity=2)
