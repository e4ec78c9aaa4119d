"""The Python client against the language-neutral conformance vectors
(tests/protocol/vectors.json, schema in tests/protocol/README.md).

Request vectors are built with optimd.messages, the builders Client's methods
send; reply vectors go through optimd.messages.parse_reply, the parser those
methods return from. A vector this file cannot map (an op, a request key, a
result key or an expectation it does not know) fails the test: a client that
silently skipped what it does not understand would pass for conformance
without being conformant."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import unittest
from typing import Any, Callable

import msgpack
import numpy as np

import optimd
from optimd import messages

VECTORS = os.path.join(os.environ["OPTIMD_SOURCE_DIR"], "tests", "protocol", "vectors.json")
_DTYPES = {"f32": np.dtype("<f4"), "f64": np.dtype("<f8")}


class Unmappable(AssertionError):
    """A vector names something this test does not know how to map."""


def tensor(t: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(t["data"]), _DTYPES[t["dtype"]]).reshape(t["shape"])


def tensors(m: dict[str, Any]) -> dict[str, np.ndarray]:
    return {name: tensor(t) for name, t in m.items()}


def session_of(call: dict[str, Any]) -> optimd.Session:
    return optimd.Session(call.pop("session"), call.pop("token"))


def group_of(g: dict[str, Any]) -> optimd.Group:
    g = dict(g)
    spec = optimd.Group(g.pop("name"), g.pop("hparams", {}), g.pop("scheduler", optimd.INHERIT),
                        g.pop("sched_hparams", {}), schedules_of(g.pop("schedulers", [])),
                        g.pop("milestones", ()))
    if g:
        raise Unmappable(f"group keys {sorted(g)}")
    return spec


def schedules_of(entries: list[dict[str, Any]]) -> list[optimd.Schedule]:
    out = []
    for e in entries:
        e = dict(e)
        out.append(optimd.Schedule(e.pop("scheduler"), e.pop("sched_hparams", {})))
        if e:
            raise Unmappable(f"schedulers entry keys {sorted(e)}")
    return out


def lookahead_of(d: dict[str, Any] | None) -> optimd.Lookahead | None:
    if d is None:
        return None
    d = dict(d)
    spec = optimd.Lookahead(d.pop("k", None), d.pop("alpha", None))
    if d:
        raise Unmappable(f"lookahead keys {sorted(d)}")
    return spec


# op -> builds the request from the vector's call, popping each key it uses.
def _open(c: dict[str, Any]) -> messages.Request:
    return messages.open(c.pop("session"), c.pop("optimizer"), c.pop("hparams", None),
                         scheduler=c.pop("scheduler", None), sched_hparams=c.pop("sched_hparams", None),
                         groups=[group_of(g) for g in c.pop("groups")] if "groups" in c else None,
                         durability=c.pop("durability", None), open_key=c.pop("open_key", None),
                         lookahead=lookahead_of(c.pop("lookahead", None)),
                         schedulers=schedules_of(c.pop("schedulers", [])), milestones=c.pop("milestones", None))


def _step(c: dict[str, Any]) -> messages.Request:
    s = session_of(c)
    clip_norm = c.pop("clip_norm", None)
    return messages.step(s, tensors(c.pop("grads")), return_params=c.pop("return", True),
                         seq=c.pop("seq", None), client=c.pop("client", None),
                         clip_value=c.pop("clip_value", None),
                         clip_norm=None if clip_norm is None else optimd.ClipNorm(**clip_norm))


BUILDERS: dict[str, Callable[[dict[str, Any]], messages.Request]] = {
    "hello": lambda c: messages.hello(c.pop("client", None)),
    "plugins": lambda c: messages.plugins(),
    "sessions": lambda c: messages.sessions(),
    "open": _open,
    "attach": lambda c: messages.attach(session_of(c)),
    "info": lambda c: messages.info(session_of(c), c.pop("client", None)),
    "hparams": lambda c: messages.hparams(session_of(c)),
    "set_hparams": lambda c: messages.set_hparams(session_of(c), c.pop("hparams"), c.pop("group", None)),
    "close": lambda c: messages.close(session_of(c)),
    "register": lambda c: messages.register(session_of(c), tensors(c.pop("params")), c.pop("group", None)),
    "step": _step,
    "observe": lambda c: messages.observe(session_of(c), c.pop("metric"), c.pop("group", None)),
    "switch": lambda c: messages.switch(session_of(c), c.pop("optimizer"), c.pop("hparams", None)),
    "reload": lambda c: messages.reload(c.pop("admin_token")),
    "load": lambda c: messages.load(c.pop("path"), c.pop("admin_token")),
    "drop": lambda c: messages.drop(c.pop("session"), c.pop("admin_token")),
    "shutdown": lambda c: messages.shutdown(c.pop("admin_token")),
    "pull": lambda c: messages.pull(session_of(c), c.pop("names", None)),
    "state": lambda c: messages.state(session_of(c), c.pop("names", None)),
    "export": lambda c: messages.export(session_of(c)),
    "import": lambda c: messages.import_(bytes.fromhex(c.pop("snapshot")), c.pop("session", None),
                                         c.pop("durability", None)),
}


def build(call: dict[str, Any]) -> messages.Request:
    c = json.loads(json.dumps(call))  # a private copy to pop from
    op = c.pop("op")
    if op not in BUILDERS:
        raise Unmappable(f"no builder for op {op!r}")
    request = BUILDERS[op](c)
    if c:
        raise Unmappable(f"{op}: call keys {sorted(c)} reach no argument of the client")
    return request


def same_value(a: Any, b: Any) -> bool:
    """msgpack values equal as README.md asks: integer width and float32/64
    do not matter (both decode to Python int/float), types do (1 is not 1.0,
    nor True), maps ignore key order (dict equality)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def request_matches(encoded: bytes, expected_hex: str) -> tuple[bool, Any, Any]:
    ours = msgpack.unpackb(encoded, raw=False)
    theirs = msgpack.unpackb(bytes.fromhex(expected_hex), raw=False)
    for m in (ours, theirs):
        m.pop("id", None)
    return same_value(ours, theirs), ours, theirs


# (type, protocol key) -> attribute path, where a typed result names a key
# differently; every other key is the attribute of the same name.
ALIASES: dict[tuple[type, str], str] = {
    (optimd.Session, "session"): "name",
    (optimd.ImportResult, "session"): "session.name",
    (optimd.ImportResult, "token"): "session.token",
}
# op -> the key of the reply whose value the typed result is, for ops whose
# methods return one value rather than a result object.
UNWRAP = {"plugins": "plugins", "sessions": "sessions", "pull": "params", "state": "state",
          "export": "snapshot", "register": "registered", "reload": "plugins", "load": "plugins"}


def absent(value: Any) -> bool:
    """A typed result's attribute that the reply did not carry must hold its
    "absent" value (not 0.0, which equals False in Python)."""
    return value is None or value is False or (isinstance(value, (dict, tuple)) and not value)


def compare(expected: Any, actual: Any, path: str) -> None:
    """Raises AssertionError (Unmappable for what cannot be mapped) unless the
    parsed ``actual`` equals the vector's ``expected``."""
    if isinstance(expected, dict) and set(expected) == {"dtype", "shape", "data"} and isinstance(actual, np.ndarray):
        want = tensor(expected)
        if actual.dtype != want.dtype or actual.shape != want.shape or actual.tobytes() != want.tobytes():
            raise AssertionError(f"{path}: tensor {actual.dtype}{list(actual.shape)} != {expected}")
        return
    if dataclasses.is_dataclass(actual) and isinstance(expected, dict):
        seen = set()
        for key, value in expected.items():
            attr = ALIASES.get((type(actual), key), key)
            target: Any = actual
            for part in attr.split("."):
                if not hasattr(target, part):
                    raise Unmappable(f"{path}: key {key!r} maps to no attribute of {type(actual).__name__}")
                target = getattr(target, part)
            seen.add(attr.split(".")[0])
            compare(value, target, f"{path}.{key}")
        for f in dataclasses.fields(actual):
            if f.name not in seen and not absent(getattr(actual, f.name)):
                raise AssertionError(f"{path}: {f.name}={getattr(actual, f.name)!r} but the reply has no such key")
        return
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(actual) != set(expected):
            raise AssertionError(f"{path}: {actual!r} != {expected!r}")
        for key in expected:
            compare(expected[key], actual[key], f"{path}.{key}")
        return
    if isinstance(expected, list):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            raise AssertionError(f"{path}: {actual!r} != {expected!r}")
        for i, (e, a) in enumerate(zip(expected, actual)):
            compare(e, a, f"{path}[{i}]")
        return
    if isinstance(expected, bool) or isinstance(actual, bool) or expected is None or isinstance(expected, str):
        if isinstance(expected, str) and isinstance(actual, bytes):
            if actual != bytes.fromhex(expected):
                raise AssertionError(f"{path}: bytes {actual.hex()} != {expected}")
            return
        if type(expected) is not type(actual) or expected != actual:
            raise AssertionError(f"{path}: {actual!r} != {expected!r}")
        return
    if isinstance(expected, (int, float)):
        if not isinstance(actual, (int, float)) or float(actual) != float(expected):
            raise AssertionError(f"{path}: {actual!r} != {expected!r}")
        return
    raise Unmappable(f"{path}: expected value {expected!r} of a type the schema does not have")


def check_reply(vector: dict[str, Any]) -> None:
    op, expect = vector["op"], vector["expect"]
    if op not in messages.PARSERS:
        raise Unmappable(f"no reply parser for op {op!r}")
    message, rid = bytes.fromhex(vector["msgpack"]), vector["request_id"]
    if expect.get("invalid") is True and set(expect) == {"invalid"}:
        try:
            result = messages.parse_reply(op, message, rid)
        except optimd.ProtocolError:
            return
        raise AssertionError(f"an invalid reply parsed as {result!r}")
    if expect.get("ok") is False and set(expect) == {"ok", "code", "error"}:
        try:
            result = messages.parse_reply(op, message, rid)
        except optimd.OptimdError as err:
            if (err.code, err.name) != (expect["code"], expect["error"]):
                raise AssertionError(f"error {err.code} {err.name}, expected {expect['code']} {expect['error']}")
            if type(err) is not optimd.ERROR_CLASSES.get(err.code, optimd.OptimdError):
                raise AssertionError(f"error {err.code} raised as {type(err).__name__}")
            return
        raise AssertionError(f"an error reply parsed as {result!r}")
    if expect.get("ok") is True and set(expect) == {"ok", "result"}:
        result = messages.parse_reply(op, message, rid)
        want = expect["result"]
        if op in ("close", "drop", "shutdown"):
            if want != {} or result is not None:
                raise Unmappable(f"{op}: result {want!r}")
            return
        if op in UNWRAP:
            if set(want) != {UNWRAP[op]}:
                raise Unmappable(f"{op}: result keys {sorted(want)}, the client returns only {UNWRAP[op]!r}")
            want = want[UNWRAP[op]]
        compare(want, result, op)
        return
    raise Unmappable(f"expectation {expect!r}")


class Vectors(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        with open(VECTORS) as f:
            cls.vectors = json.load(f)

    def test_file(self) -> None:
        self.assertEqual(self.vectors["protocol"], optimd.PROTOCOL_VERSION)
        self.assertGreater(len(self.vectors["requests"]), 0)
        self.assertGreater(len(self.vectors["replies"]), 0)
        # Every op the client has a parser for is covered by some vector.
        ops = {v["call"]["op"] for v in self.vectors["requests"]} | {v["op"] for v in self.vectors["replies"]}
        self.assertLessEqual(set(BUILDERS), ops)

    def test_requests(self) -> None:
        for vector in self.vectors["requests"]:
            with self.subTest(vector["name"]):
                request = build(vector["call"])
                self.assertEqual(request.op, vector["call"]["op"])
                ok, ours, theirs = request_matches(request.encode(1234), vector["msgpack"])
                self.assertTrue(ok, f"\nours:   {ours}\nvector: {theirs}")

    def test_replies(self) -> None:
        for vector in self.vectors["replies"]:
            with self.subTest(vector["name"]):
                check_reply(vector)


class TheCheckerCanFail(unittest.TestCase):
    """The comparisons above reject what differs (else the vectors could
    pass a wrong client)."""

    def setUp(self) -> None:
        with open(VECTORS) as f:
            self.vectors = json.load(f)

    def by_name(self, kind: str, name: str) -> dict[str, Any]:
        return next(v for v in self.vectors[kind] if v["name"] == name)

    def test_request_differences(self) -> None:
        vector = self.by_name("requests", "step_sequenced")
        for key, value in (("seq", 43), ("return", True), ("client", "w1")):
            call = dict(vector["call"], **{key: value})
            ok, _, _ = request_matches(build(call).encode(1), vector["msgpack"])
            self.assertFalse(ok, key)
        call = dict(vector["call"])
        del call["client"]
        self.assertFalse(request_matches(build(call).encode(1), vector["msgpack"])[0])
        self.assertFalse(same_value({"x": 1}, {"x": 1.0}))
        self.assertFalse(same_value({"x": True}, {"x": 1}))
        with self.assertRaises(Unmappable):
            build(dict(vector["call"], clip_nrom=1.0))
        with self.assertRaises(Unmappable):
            build({"op": "teleport"})

    def test_reply_differences(self) -> None:
        vector = self.by_name("replies", "step_groups")
        wrong = json.loads(json.dumps(vector))
        wrong["expect"]["result"]["next_lrs"]["head"] = 0.01
        with self.assertRaises(AssertionError):
            check_reply(wrong)
        wrong = json.loads(json.dumps(vector))
        wrong["expect"]["result"]["params"]["w"]["data"] = "0000003f0000a03f"
        with self.assertRaises(AssertionError):
            check_reply(wrong)
        wrong = json.loads(json.dumps(vector))
        del wrong["expect"]["result"]["grad_norm"]  # the client reports one the vector does not have
        with self.assertRaises(AssertionError):
            check_reply(wrong)
        wrong = json.loads(json.dumps(vector))
        wrong["expect"]["result"]["warp"] = 9
        with self.assertRaises(Unmappable):
            check_reply(wrong)
        err = json.loads(json.dumps(self.by_name("replies", "bad_token")))
        err["expect"]["code"] = 20
        with self.assertRaises(AssertionError):
            check_reply(err)
        ok = json.loads(json.dumps(self.by_name("replies", "hello")))
        ok["expect"] = {"invalid": True}
        with self.assertRaises(AssertionError):
            check_reply(ok)


if __name__ == "__main__":
    unittest.main(verbosity=2)
