"""Writes seed inputs for fuzz_request: one valid request per op (session
ops use the harness's session "fuzz" and its token of 32 zeros), so the
fuzzer starts from messages that reach deep into every handler; then every
request of the protocol's conformance vectors (tests/protocol/vectors.json),
pointed at the same session."""
import json
import os
import struct
import sys

import msgpack

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
s = {"session": "fuzz", "token": "0" * 32}
f32 = lambda *v: {"dtype": "f32", "shape": [len(v)], "data": struct.pack("<%df" % len(v), *v)}
f64m = {"dtype": "f64", "shape": [2, 3], "data": struct.pack("<6d", *range(6))}
seeds = [
    {"op": "hello", "client": "seed"},
    {"op": "plugins"},
    {"op": "sessions"},
    {"op": "open", "session": "s2", "optimizer": "sgd", "hparams": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
     "scheduler": "step", "sched_hparams": {"step_size": 2, "gamma": 0.5}},
    {"op": "open", "session": "s3", "optimizer": "adamw", "hparams": {"amsgrad": True}, "scheduler": "cosine",
     "sched_hparams": {"T_max": 3}},
    {"op": "info", **s}, {"op": "attach", **s}, {"op": "hparams", **s},
    {"op": "set_hparams", **s, "hparams": {"lr": 0.01, "beta1": 0.8}},
    {"op": "register", **s, "params": {"z": f32(1, 2)}},
    {"op": "step", **s, "grads": {"w": f32(0.1, 0.2, 0.3, 0.4), "m": f64m}},
    {"op": "step", **s, "grads": {"w": f32(1, 1, 1, 1)}, "return": False},
    # A sliced step in two parts (the second completes it), and a retry.
    {"op": "step", **s, "seq": 7, "client": "f", "part": {"index": 0, "count": 2},
     "grads": {"w": {"offset": 0, "values": f32(0.1, 0.2)}}},
    {"op": "step", **s, "seq": 7, "client": "f", "part": {"index": 1, "count": 2}, "clip_value": 0.5,
     "grads": {"w": {"offset": 2, "values": f32(0.3, 0.4)}, "m": f64m}},
    {"op": "step", **s, "seq": 7, "client": "f", "part": {"index": 0, "count": 2},
     "grads": {"w": {"offset": 0, "values": f32(0.1, 0.2)}}},
    {"op": "step", **s, "seq": 8, "client": "f", "part": {"index": 1, "count": 3},
     "grads": {"m": f64m}},
    {"op": "abandon_step", **s, "seq": 8, "client": "f"},
    {"op": "pull", **s, "names": ["w", "m"]},
    {"op": "pull", **s},
    {"op": "close", "session": "nope", "token": "0" * 32},
]
for i, body in enumerate(seeds):
    req = {"v": 1, "id": i, **body}
    with open(os.path.join(out, "seed-%02d-%s" % (i, body["op"])), "wb") as f:
        f.write(msgpack.packb(req, use_bin_type=True))

vectors = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "protocol", "vectors.json")
with open(vectors) as f:
    for v in json.load(f)["requests"]:
        body = msgpack.unpackb(bytes.fromhex(v["msgpack"]), raw=False)
        if "token" in body:
            body.update(s)
        with open(os.path.join(out, "vector-%s" % v["name"]), "wb") as f:
            f.write(msgpack.packb(body, use_bin_type=True))
