#!/usr/bin/python3
"""Writes vectors-sample.json: a few conformance vectors in the format of
tests/protocol/vectors.json, encoded with Python's msgpack (independent of
the Go client), for the Go conformance runner's own test."""
import json
import os
import struct

import msgpack


def tensor(dtype, shape, values):
    fmt = "<%d%s" % (len(values), "f" if dtype == "f32" else "d")
    data = struct.pack(fmt, *values)
    return {"dtype": dtype, "shape": shape, "data": data}


def jt(t):
    return {"dtype": t["dtype"], "shape": t["shape"], "data": t["data"].hex()}


def enc(m, **kw):
    return msgpack.packb(m, use_bin_type=True, **kw).hex()


TOKEN = "0123456789abcdef0123456789abcdef"
requests = []


def req(name, call, extra_id=5, single_float=False):
    m = {"v": 1, "id": extra_id}
    m.update(call)
    requests.append({"name": name, "description": name, "call": call_json(call),
                     "msgpack": enc(m, use_single_float=single_float)})


def call_json(call):
    out = {}
    for k, v in call.items():
        if k in ("grads", "params"):
            out[k] = {n: jt(t) for n, t in v.items()}
        elif isinstance(v, bytes):
            out[k] = v.hex()
        else:
            out[k] = v
    return out


g = tensor("f32", [2], [0.5, -1.0])
req("hello", {"op": "hello", "client": "go"})
req("plugins", {"op": "plugins"})
req("open-full", {"op": "open", "session": "run1", "optimizer": "adamw",
                  "hparams": {"lr": 0.25, "amsgrad": True}, "scheduler": "step",
                  "sched_hparams": {"step_size": 2, "gamma": 0.5}, "durability": "always"},
    single_float=True)
req("info-client", {"op": "info", "session": "run1", "token": TOKEN, "client": "w0"})
req("step-seq", {"op": "step", "session": "run1", "token": TOKEN, "grads": {"w": g},
                 "seq": 3, "client": "w0", "return": True}, extra_id=2**40)
req("step-noreturn", {"op": "step", "session": "run1", "token": TOKEN, "grads": {},
                      "return": False})
req("pull-none", {"op": "pull", "session": "run1", "token": TOKEN, "names": []})
req("import", {"op": "import", "snapshot": b"\x00\x01safetensors", "session": "copy"})

replies = []


def rep(name, op, rid, msg, expect, raw=None):
    replies.append({"name": name, "description": name, "op": op, "request_id": rid,
                    "msgpack": raw if raw is not None else enc(msg), "expect": expect})


w = tensor("f32", [2], [1.5, -2.25])
rep("hello", "hello", 1, {"v": 1, "id": 1, "ok": True, "server": "optimd", "version": "0.1.0",
                          "protocol": 1, "abi": [1, 0], "max_message": 268435456},
    {"ok": True, "result": {"server": "optimd", "version": "0.1.0", "protocol": 1,
                            "abi": [1, 0], "max_message": 268435456}})
rep("step", "step", 7, {"v": 1, "id": 7, "ok": True, "steps": 1, "lr": 0.001, "next_lr": 0.001,
                        "duplicate": False, "params": {"w": w}},
    {"ok": True, "result": {"steps": 1, "lr": 0.001, "next_lr": 0.001, "duplicate": False,
                            "params": {"w": jt(w)}}})
rep("step-noreturn-int-lr", "step", 8, {"v": 1, "id": 8, "ok": True, "steps": 2, "lr": 1,
                                        "next_lr": 0.5, "duplicate": True},
    {"ok": True, "result": {"steps": 2, "lr": 1, "next_lr": 0.5, "duplicate": True}})
rep("plugins-scheduler", "plugins", 3, {"v": 1, "id": 3, "ok": True, "plugins": [
    {"id": "step", "kind": "scheduler", "version": "1.0.0", "description": "StepLR",
     "hparams": [{"key": "gamma", "type": "float", "required": False, "mutable": False,
                  "min": 0.0, "max": 1e300, "min_exclusive": False, "max_exclusive": False,
                  "default": 0.1, "doc": "decay"}]}]},
    {"ok": True, "result": {"plugins": [
        {"id": "step", "kind": "scheduler", "version": "1.0.0", "description": "StepLR",
         "hparams": [{"key": "gamma", "type": "float", "required": False, "mutable": False,
                      "min": 0.0, "max": 1e300, "min_exclusive": False, "max_exclusive": False,
                      "default": 0.1, "doc": "decay"}]}]}})
info = {"client_seq": 4, "session": "run1", "durability": "interval", "optimizer": "sgd",
        "optimizer_version": "1.0.0", "scheduler": None, "hparams": {"lr": 0.1, "nesterov": False},
        "sched_hparams": {}, "base_lr": 0.1, "lr": 0.1, "steps": 4,
        "params": [{"name": "w", "dtype": "f64", "shape": [2, 3], "steps": 4}]}
rep("info", "info", 9, dict({"v": 1, "id": 9, "ok": True}, **info), {"ok": True, "result": info})
rep("export", "export", 4, {"v": 1, "id": 4, "ok": True, "snapshot": b"\x08\x00abc"},
    {"ok": True, "result": {"snapshot": "08006162 63".replace(" ", "")}})
rep("bad-token", "step", 7, {"v": 1, "id": 7, "ok": False, "code": 21, "error": "BAD_TOKEN",
                             "message": "wrong token"},
    {"ok": False, "code": 21, "error": "BAD_TOKEN"})
rep("malformed-id0", "pull", 7, {"v": 1, "id": 0, "ok": False, "code": 1, "error": "MALFORMED",
                                 "message": "not msgpack"},
    {"ok": False, "code": 1, "error": "MALFORMED"})
inv = {"invalid": True}
rep("wrong-id", "close", 7, {"v": 1, "id": 8, "ok": True}, inv)
rep("ok-id0", "close", 7, {"v": 1, "id": 0, "ok": True}, inv)
rep("missing-ok", "close", 7, {"v": 1, "id": 7}, inv)
rep("wrong-version", "close", 7, {"v": 2, "id": 7, "ok": True}, inv)
rep("not-a-map", "close", 7, [1, 7, True], inv)
rep("trailing-bytes", "close", 7, None, inv, raw=enc({"v": 1, "id": 7, "ok": True}) + "c0")
rep("truncated", "close", 7, None, inv, raw=enc({"v": 1, "id": 7, "ok": True})[:-2])
rep("steps-is-str", "step", 7, {"v": 1, "id": 7, "ok": True, "steps": "1", "lr": 0.1,
                                "next_lr": 0.1, "duplicate": False}, inv)
rep("tensor-short", "pull", 7, {"v": 1, "id": 7, "ok": True,
                                "params": {"w": {"dtype": "f32", "shape": [3], "data": b"\0" * 8}}}, inv)
rep("tensor-data-str", "pull", 7, {"v": 1, "id": 7, "ok": True,
                                   "params": {"w": {"dtype": "f32", "shape": [1], "data": "abcd"}}}, inv)
rep("tensor-bad-dtype", "pull", 7, {"v": 1, "id": 7, "ok": True,
                                    "params": {"w": {"dtype": "f16", "shape": [1], "data": b"ab"}}}, inv)
rep("error-code-str", "pull", 7, {"v": 1, "id": 7, "ok": False, "code": "21", "error": "BAD_TOKEN",
                                  "message": ""}, inv)
# {"v": 1, "id": 7, "ok": true, "params": [[[...nil...]]]} nested 1000 deep.
rep("deep-nesting", "pull", 7, None, inv,
    raw="84" + enc({"v": 1, "id": 7, "ok": True})[2:] + "a6" + b"params".hex() + "91" * 1000 + "c0")

out = {"protocol": 1, "requests": requests, "replies": replies}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors-sample.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
