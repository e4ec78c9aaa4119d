#!/usr/bin/env python3
"""Writes sample_vectors.json: a few conformance vectors in the schema of
tests/protocol/vectors.json, encoded here by a minimal msgpack writer that
shares nothing with the Rust client, so the Rust runner has something
independent to check itself on. Run: python3 make_sample_vectors.py > sample_vectors.json"""
import json
import struct


def mp(v):
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if v >= 0:
            return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, F32):
        return b"\xca" + struct.pack(">f", v.x)
    if isinstance(v, str):
        b = v.encode()
        return b"\xd9" + bytes([len(b)]) + b if len(b) < 256 else b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, bytes):
        return b"\xc5" + struct.pack(">H", len(v)) + v
    if isinstance(v, list):
        return b"\xdc" + struct.pack(">H", len(v)) + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        return b"\xde" + struct.pack(">H", len(v)) + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


class F32:
    def __init__(self, x):
        self.x = x


def tensor(dtype, shape, values):
    fmt = "<%d%s" % (len(values), "f" if dtype == "f32" else "d")
    return {"dtype": dtype, "shape": shape, "data": struct.pack(fmt, *values)}


def tjson(t):
    return {"dtype": t["dtype"], "shape": t["shape"], "data": t["data"].hex()}


TOKEN = "0123456789abcdef0123456789abcdef"
requests = []


def req(name, call):
    body = {"v": 1, "id": 99}
    body.update({k: v for k, v in call.items()})
    jcall = {k: (tjson_map(v) if k in ("grads", "params") else v) for k, v in call.items()}
    requests.append({"name": name, "description": name, "call": jcall, "msgpack": mp(body).hex()})


def tjson_map(m):
    return {k: tjson(t) for k, t in m.items()}


req("hello_client", {"op": "hello", "client": "rs"})
req("plugins", {"op": "plugins"})
req("open_all_keys", {"op": "open", "session": "run1", "optimizer": "sgd",
                      "hparams": {"lr": 0.5, "nesterov": False, "momentum": 0.9},
                      "scheduler": "step", "sched_hparams": {"step_size": 3, "gamma": 0.5},
                      "durability": "always"})
req("step_sequenced", {"op": "step", "session": "run1", "token": TOKEN,
                       "grads": {"w": tensor("f32", [2], [0.5, -1.0]),
                                 "big": tensor("f64", [3, 100], [float(i) for i in range(300)])},
                       "seq": 3, "client": "w0", "return": False})
req("pull_names", {"op": "pull", "session": "run1", "token": TOKEN, "names": ["w", "b"]})
req("info_client", {"op": "info", "session": "run1", "token": TOKEN, "client": "w0"})
req("open_groups", {"op": "open", "session": "g", "optimizer": "sgd", "hparams": {"lr": 0.1},
                    "scheduler": "step", "sched_hparams": {"step_size": 2},
                    "open_key": "k" * 20,
                    "groups": [{"name": "frozen", "scheduler": None},
                               {"name": "b", "hparams": {"lr": 1}, "scheduler": "plateau",
                                "sched_hparams": {"patience": 0, "factor": 0.5}},
                               {"name": "c"}]})
req("register_group", {"op": "register", "session": "g", "token": TOKEN,
                       "params": {"w": tensor("f32", [1], [1.0])}, "group": "b"})
req("set_hparams_all", {"op": "set_hparams", "session": "g", "token": TOKEN,
                        "hparams": {"momentum": 0.5}})
req("step_clip_norm", {"op": "step", "session": "g", "token": TOKEN, "grads": {},
                       "clip_value": 0.5, "clip_norm": {"max_norm": 2.0}})
req("observe", {"op": "observe", "session": "g", "token": TOKEN, "metric": 1.5})

replies = []


def rep(name, op, rid, body, expect):
    raw = body if isinstance(body, bytes) else mp(body)
    replies.append({"name": name, "description": name, "op": op, "request_id": rid,
                    "msgpack": raw.hex(), "expect": expect})


w = tensor("f32", [2], [0.25, -0.5])
rep("step_ok", "step", 7, {"v": 1, "id": 7, "ok": True, "steps": 1, "lr": 0.001, "next_lr": F32(0.5),
                           "duplicate": False, "params": {"w": w}},
    {"ok": True, "result": {"steps": 1, "lr": 0.001, "next_lr": 0.5, "duplicate": False,
                            "params": {"w": tjson(w)}}})
rep("step_no_params", "step", 8, {"ok": True, "v": 1, "id": 8, "steps": 2, "lr": 1, "next_lr": 0.5,
                                  "duplicate": True},
    {"ok": True, "result": {"steps": 2, "lr": 1.0, "next_lr": 0.5, "duplicate": True}})
rep("bad_token", "pull", 3, {"v": 1, "id": 3, "ok": False, "code": 21, "error": "BAD_TOKEN",
                             "message": "wrong token"},
    {"ok": False, "code": 21, "error": "BAD_TOKEN"})
rep("hello_ok", "hello", 1, {"v": 1, "id": 1, "ok": True, "server": "optimd", "version": "0.1.0",
                             "protocol": 1, "abi": [1, 2], "max_message": 268435456},
    {"ok": True, "result": {"server": "optimd", "version": "0.1.0", "protocol": 1, "abi": [1, 2],
                            "max_message": 268435456}})
rep("wrong_id", "hello", 2, {"v": 1, "id": 3, "ok": True, "server": "optimd", "version": "0.1.0",
                             "protocol": 1, "abi": [1, 2], "max_message": 1}, {"invalid": True})
rep("short_tensor", "pull", 4, {"v": 1, "id": 4, "ok": True,
                                "params": {"w": {"dtype": "f32", "shape": [3], "data": b"\0" * 8}}},
    {"invalid": True})
rep("not_a_map", "close", 5, [1, 2], {"invalid": True})
rep("no_ok", "close", 5, {"v": 1, "id": 5}, {"invalid": True})
rep("steps_is_a_string", "register", 6, {"v": 1, "id": 6, "ok": True, "registered": "2"},
    {"invalid": True})
rep("truncated", "close", 5, mp({"v": 1, "id": 5, "ok": True})[:-1], {"invalid": True})
rep("trailing_bytes", "close", 5, mp({"v": 1, "id": 5, "ok": True}) + b"\xc0", {"invalid": True})
rep("huge_claim", "pull", 4, b"\xdf\xff\xff\xff\xff", {"invalid": True})
rep("close_ok", "close", 9, {"v": 1, "id": 9, "ok": True}, {"ok": True, "result": {}})
rep("error_id0", "close", 9, {"v": 1, "id": 0, "ok": False, "code": 1, "error": "MALFORMED",
                              "message": "m"}, {"ok": False, "code": 1, "error": "MALFORMED"})
rep("error_other_id", "close", 9, {"v": 1, "id": 8, "ok": False, "code": 1, "error": "MALFORMED",
                                   "message": "m"}, {"invalid": True})
rep("success_id0", "close", 9, {"v": 1, "id": 0, "ok": True}, {"invalid": True})
rep("open_existing", "open", 2, {"v": 1, "id": 2, "ok": True, "session": "g", "token": TOKEN,
                                 "lr": F32(0.25), "existing": True, "later": [1]},
    {"ok": True, "result": {"session": "g", "token": TOKEN, "lr": 0.25, "existing": True}})
rep("open_without_existing", "open", 2, {"v": 1, "id": 2, "ok": True, "session": "g",
                                         "token": TOKEN, "lr": 0.25}, {"invalid": True})
rep("step_norms", "step", 3, {"v": 1, "id": 3, "ok": True, "steps": 4, "lr": 0.1, "next_lr": 0.1,
                              "duplicate": False, "lrs": {"default": 0.1, "b": 1},
                              "next_lrs": {"default": 0.1, "b": F32(0.5)},
                              "grad_norms": {"b": 2.5}},
    {"ok": True, "result": {"steps": 4, "lr": 0.1, "next_lr": 0.1, "duplicate": False,
                            "lrs": {"default": 0.1, "b": 1.0}, "next_lrs": {"default": 0.1, "b": 0.5},
                            "grad_norms": {"b": 2.5}}})
rep("step_both_norms", "step", 3, {"v": 1, "id": 3, "ok": True, "steps": 4, "lr": 0.1,
                                   "next_lr": 0.1, "duplicate": False, "grad_norm": 1.0,
                                   "grad_norms": {"b": 2.5}}, {"invalid": True})
rep("step_lr_not_a_number", "step", 3, {"v": 1, "id": 3, "ok": True, "steps": 4, "lr": 0.1,
                                        "next_lr": 0.1, "duplicate": False,
                                        "lrs": {"default": "0.1"}}, {"invalid": True})
rep("observe_ok", "observe", 4, {"v": 1, "id": 4, "ok": True, "lr": 0.5,
                                 "lrs": {"default": 0.5, "b": 1}},
    {"ok": True, "result": {"lr": 0.5, "lrs": {"default": 0.5, "b": 1.0}}})
rep("observe_without_lrs", "observe", 4, {"v": 1, "id": 4, "ok": True, "lr": 0.5},
    {"invalid": True})
group = {"name": "default", "scheduler": None, "hparams": {"lr": 0.1, "nesterov": False},
         "sched_hparams": {}, "base_lr": 0.1, "lr": 0.1, "params": 0}
rep("hparams_groups", "hparams", 5, {"v": 1, "id": 5, "ok": True, "hparams": {"lr": 0.1, "nesterov": False},
                                     "sched_hparams": {}, "base_lr": 0.1, "lr": 0.1,
                                     "groups": [group, dict(group, name="b", scheduler="plateau",
                                                            sched_hparams={"patience": 0}, params=2)]},
    {"ok": True, "result": {"hparams": {"lr": 0.1, "nesterov": False}, "sched_hparams": {},
                            "base_lr": 0.1, "lr": 0.1,
                            "groups": [group, dict(group, name="b", scheduler="plateau",
                                                   sched_hparams={"patience": 0}, params=2)]}})
rep("hparams_group_without_params", "hparams", 5,
    {"v": 1, "id": 5, "ok": True, "hparams": {}, "sched_hparams": {}, "base_lr": 0.1, "lr": 0.1,
     "groups": [{k: v for k, v in group.items() if k != "params"}]}, {"invalid": True})
rep("plugin_unknown_slot_shape", "plugins", 6,
    {"v": 1, "id": 6, "ok": True, "plugins": [
        {"id": "x", "kind": "optimizer", "version": "1", "description": "d", "hparams": [],
         "slots": [{"key": "s", "dtype": "f32", "shape": "diagonal", "enabled_by": None, "doc": ""}],
         "dtypes": ["f32"]}]},
    {"ok": True, "result": {"plugins": [
        {"id": "x", "kind": "optimizer", "version": "1", "description": "d", "hparams": [],
         "slots": [{"key": "s", "dtype": "f32", "shape": "diagonal", "enabled_by": None, "doc": ""}],
         "dtypes": ["f32"]}]}})

print(json.dumps({"protocol": 1, "requests": requests, "replies": replies}, indent=1))
