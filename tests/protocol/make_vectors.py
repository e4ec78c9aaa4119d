#!/usr/bin/env python3
"""Writes tests/protocol/vectors.json, the language-neutral conformance
vectors every client checks itself against (tests/protocol/README.md).

The vectors are written down here by hand from docs/protocol.md -- request
arguments, reply maps, expected results -- and encoded with Python's msgpack
package, which is not part of any optimd client. test_vectors_daemon.py checks
them against the real daemon, so they cannot drift from what it speaks.

    python3 tests/protocol/make_vectors.py > tests/protocol/vectors.json
"""
import json
import struct
import sys

import msgpack

TOKEN = "0123456789abcdef0123456789abcdef"
REQUEST_ID = 7


def tensor(dtype, shape, values):
    fmt = "<%d%s" % (len(values), "f" if dtype == "f32" else "d")
    return {"dtype": dtype, "shape": shape, "data": struct.pack(fmt, *values)}


def to_json(v):
    """A msgpack value as the JSON the schema uses: bin as hex strings."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_json(x) for x in v]
    return v


def pack(v):
    return msgpack.packb(v, use_bin_type=True)


requests = []
replies = []


def request(name, description, call):
    """`call`: the op and its request keys, as a client's API takes them."""
    body = {"v": 1, "id": REQUEST_ID}
    body.update(call)
    requests.append({"name": name, "description": description, "call": to_json(call),
                     "msgpack": pack(body).hex()})


def reply_ok(name, description, op, result, raw=None, unknown=None):
    """`unknown`: keys the reply carries that no client knows (ignored)."""
    body = {"v": 1, "id": REQUEST_ID, "ok": True}
    body.update(result)
    body.update(unknown or {})
    replies.append({"name": name, "description": description, "op": op, "request_id": REQUEST_ID,
                    "msgpack": (raw if raw is not None else pack(body)).hex(),
                    "expect": {"ok": True, "result": to_json(result)}})


def reply_error(name, description, op, code, error, rid=REQUEST_ID):
    body = {"v": 1, "id": rid, "ok": False, "code": code, "error": error,
            "message": "as the daemon would say it"}
    replies.append({"name": name, "description": description, "op": op, "request_id": REQUEST_ID,
                    "msgpack": pack(body).hex(), "expect": {"ok": False, "code": code, "error": error}})


def reply_invalid(name, description, op, raw):
    replies.append({"name": name, "description": description, "op": op, "request_id": REQUEST_ID,
                    "msgpack": raw.hex(), "expect": {"invalid": True}})


S = {"session": "run1", "token": TOKEN}
W = tensor("f32", [2], [0.5, -1.25])
B = tensor("f64", [2, 3], [1.0, 2.0, 3.0, -4.0, 5.5, 0.0])
SCALAR = tensor("f32", [], [3.0])
EMPTY = tensor("f32", [0, 4], [])

# ---- requests ------------------------------------------------------------
request("hello", "hello with a client description", {"op": "hello", "client": "conformance"})
request("plugins", "the plugin listing", {"op": "plugins"})
request("sessions", "the session listing", {"op": "sessions"})
request("open_minimal", "open with only the required keys",
        {"op": "open", "session": "run1", "optimizer": "adamw"})
request("open_full", "open with hyperparameters of every type, a scheduler and durability",
        {"op": "open", "session": "run1", "optimizer": "sgd",
         "hparams": {"lr": 0.5, "momentum": 0.9, "nesterov": True},
         "scheduler": "step", "sched_hparams": {"step_size": 3, "gamma": 0.5},
         "durability": "always"})
request("open_groups", "open with an open_key and two extra parameter groups",
        {"op": "open", "session": "run1", "optimizer": "adamw", "hparams": {"lr": 0.001},
         "open_key": "retry-key-0123456789",
         "groups": [{"name": "no_decay", "hparams": {"weight_decay": 0.0}},
                    {"name": "head", "hparams": {"lr": 0.01}, "scheduler": "plateau",
                     "sched_hparams": {"patience": 2}}]})
request("register_group", "register into a named group",
        {"op": "register", **S, "params": {"bias": W}, "group": "no_decay"})
request("set_hparams_group", "set a hyperparameter of one group",
        {"op": "set_hparams", **S, "hparams": {"lr": 0.02}, "group": "head"})
request("step_clipped", "a step with clipping by value and by norm per group",
        {"op": "step", **S, "grads": {"w": W}, "return": True, "clip_value": 10.0,
         "clip_norm": {"max_norm": 1.0, "norm_type": 2.0, "per_group": True}})
request("observe", "a metric for a plateau scheduler", {"op": "observe", **S, "metric": 0.125})
request("observe_group", "a metric for one group", {"op": "observe", **S, "metric": 3.5, "group": "head"})
request("open_lookahead_sequential", "open with lookahead and a sequential schedule",
        {"op": "open", "session": "run1", "optimizer": "sgd", "hparams": {"lr": 0.1},
         "lookahead": {"k": 5, "alpha": 0.5}, "scheduler": "sequential",
         "schedulers": [{"scheduler": "linear", "sched_hparams": {"start_factor": 0.1, "total_iters": 3}},
                        {"scheduler": "exponential", "sched_hparams": {"gamma": 0.5}}],
         "milestones": [3]})
request("open_chained_group", "a group with a chained schedule",
        {"op": "open", "session": "run1", "optimizer": "sgd", "hparams": {"lr": 0.1},
         "groups": [{"name": "g", "scheduler": "chained",
                     "schedulers": [{"scheduler": "constant", "sched_hparams": {"factor": 0.5}},
                                    {"scheduler": "exponential", "sched_hparams": {"gamma": 0.9}}]}]})
request("switch", "move a session to another optimizer",
        {"op": "switch", **S, "optimizer": "adam", "hparams": {"lr": 0.001}})
request("reload", "rescan the plugin directories (admin)", {"op": "reload", "admin_token": "admin-secret"})
request("load", "load one plugin file (admin)",
        {"op": "load", "path": "/opt/optimd/plugins/toy.so", "admin_token": "admin-secret"})
request("drop", "close any session without its token (admin)",
        {"op": "drop", "session": "run1", "admin_token": "admin-secret"})
request("shutdown", "stop the daemon gracefully (admin)", {"op": "shutdown", "admin_token": "admin-secret"})
request("attach", "attach with a token", {"op": "attach", **S})
request("info", "info naming the client, for client_seq", {"op": "info", **S, "client": "w0"})
request("hparams", "hparams of a session", {"op": "hparams", **S})
request("set_hparams", "set a float hyperparameter", {"op": "set_hparams", **S, "hparams": {"lr": 0.01}})
request("close", "close a session", {"op": "close", **S})
request("register", "register an f32 vector, an f64 matrix, a scalar and an empty tensor",
        {"op": "register", **S, "params": {"w": W, "b": B, "s": SCALAR, "e": EMPTY}})
request("step_plain", "an unsequenced step returning parameters",
        {"op": "step", **S, "grads": {"w": W}, "return": True})
request("step_sequenced", "a sequenced step that returns no parameters",
        {"op": "step", **S, "grads": {"w": W, "b": B}, "seq": 42, "client": "w0", "return": False})
request("step_empty", "a step with no gradients (advances the schedule)",
        {"op": "step", **S, "grads": {}, "return": True})
request("pull_all", "pull every parameter", {"op": "pull", **S})
request("pull_names", "pull named parameters", {"op": "pull", **S, "names": ["w", "b"]})
request("state", "the optimizer state of one parameter", {"op": "state", **S, "names": ["w"]})
request("export", "export a session", {"op": "export", **S})
request("import", "import a snapshot under another name",
        {"op": "import", "snapshot": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
         "session": "copy", "durability": "none"})

# ---- replies: success ----------------------------------------------------
reply_ok("hello", "the daemon's identity and limits", "hello",
         {"server": "optimd", "version": "0.1.0", "protocol": 1, "abi": [1, 1],
          "max_message": 268435456})
reply_ok("open", "a new session and its token", "open",
         {"session": "run1", "token": TOKEN, "lr": 0.5, "existing": False})
reply_ok("open_existing", "a retried open answered with the session its first attempt made", "open",
         {"session": "run1", "token": TOKEN, "lr": 0.25, "existing": True})
reply_ok("register", "a registration count", "register", {"registered": 4})
reply_ok("switch", "a session moved to another optimizer", "switch",
         {"optimizer": "rmsprop", "optimizer_version": "1.0.0", "carried": ["momentum_buffer"]})
reply_ok("reload", "one file loaded, one refused", "reload",
         {"plugins": [{"path": "/opt/optimd/plugins/toy.so", "loaded": True, "id": "toy", "version": "2.0.0"},
                      {"path": "/opt/optimd/plugins/bad.so", "loaded": False,
                       "error": "plugin /opt/optimd/plugins/bad.so: no symbol 'optimd_plugin'"}]})
reply_ok("step_groups", "a step of a session with groups, clipped by norm", "step",
         {"steps": 5, "lr": 0.001, "next_lr": 0.001, "duplicate": False,
          "lrs": {"default": 0.001, "head": 0.01}, "next_lrs": {"default": 0.001, "head": 0.005},
          "grad_norm": 3.25, "params": {"w": W}})
reply_ok("step_group_norms", "a step clipped per group", "step",
         {"steps": 6, "lr": 0.5, "next_lr": 0.5, "duplicate": False,
          "lrs": {"default": 0.5, "head": 0.5}, "next_lrs": {"default": 0.5, "head": 0.5},
          "grad_norms": {"default": 0.75, "head": 12.0}})
reply_ok("observe", "the next lrs after a metric", "observe",
         {"lr": 0.001, "lrs": {"default": 0.001, "head": 0.0005}})
reply_ok("step_with_params", "a step with updated parameters (f32, f64, a scalar)", "step",
         {"steps": 3, "lr": 0.001, "next_lr": 0.0005, "duplicate": False,
          "params": {"w": W, "b": B, "s": SCALAR}})
reply_ok("step_no_return", "a step asked not to return parameters", "step",
         {"steps": 4, "lr": 0.5, "next_lr": 0.5, "duplicate": False})
reply_ok("step_duplicate", "a retried sequenced step, answered from its record", "step",
         {"steps": 2, "lr": 0.25, "next_lr": 0.25, "duplicate": True, "params": {"w": W}})
reply_ok("step_integer_lr", "lr sent as an integer is still a number", "step",
         {"steps": 1, "lr": 1, "next_lr": 1, "duplicate": False})
reply_ok("step_extra_keys", "keys a client does not know are ignored", "step",
         {"steps": 1, "lr": 0.5, "next_lr": 0.5, "duplicate": False},
         unknown={"future_key": [1, 2, 3], "another": {"x": None}})
reply_ok("pull", "pulled parameters, an empty tensor among them", "pull",
         {"params": {"w": W, "e": EMPTY}})
reply_ok("pull_nothing", "pull of no names", "pull", {"params": {}})
reply_ok("state", "optimizer state with a scalar slot", "state",
         {"state": {"w": {"exp_avg": W, "step": SCALAR}, "fresh": {}}})
reply_ok("sessions", "two sessions, one without a scheduler", "sessions",
         {"sessions": [{"session": "a", "optimizer": "adam", "scheduler": None, "params": 2, "steps": 10},
                       {"session": "b", "optimizer": "sgd", "scheduler": "cosine", "params": 0,
                        "steps": 0}]})
reply_ok("close", "close answers with the envelope only", "close", {})
reply_ok("drop", "drop answers with the envelope only", "drop", {})
reply_ok("shutdown", "shutdown answers with the envelope only", "shutdown", {})
reply_ok("export", "an exported snapshot", "export", {"snapshot": b"\x00\x01\x02\xff"})
reply_ok("import", "an imported session", "import", {"session": "copy", "token": TOKEN, "steps": 12})
reply_ok("hparams", "hyperparameters of a one-group session", "hparams",
         {"hparams": {"lr": 0.01, "momentum": 0.9, "nesterov": False, "dampening": 0.0,
                      "weight_decay": 0.0, "maximize": False},
          "sched_hparams": {"step_size": 3, "gamma": 0.5}, "base_lr": 0.1, "lr": 0.01,
          "groups": [{"name": "default", "scheduler": "step",
                      "hparams": {"lr": 0.01, "momentum": 0.9, "nesterov": False, "dampening": 0.0,
                                  "weight_decay": 0.0, "maximize": False},
                      "sched_hparams": {"step_size": 3, "gamma": 0.5}, "base_lr": 0.1, "lr": 0.01,
                      "params": 1}]})
reply_ok("info", "info with client_seq", "info",
         {"client_seq": 41, "lookahead": None, "durability": "always", "session": "run1", "optimizer": "sgd",
          "optimizer_version": "1.0.0", "scheduler": None,
          "hparams": {"lr": 0.5, "momentum": 0.0, "nesterov": False, "dampening": 0.0,
                      "weight_decay": 0.0, "maximize": False},
          "sched_hparams": {}, "base_lr": 0.5, "lr": 0.5,
          "groups": [{"name": "default", "scheduler": None,
                      "hparams": {"lr": 0.5, "momentum": 0.0, "nesterov": False, "dampening": 0.0,
                                  "weight_decay": 0.0, "maximize": False},
                      "sched_hparams": {}, "base_lr": 0.5, "lr": 0.5, "params": 1}],
          "steps": 41,
          "params": [{"name": "w", "group": "default", "dtype": "f32", "shape": [2], "steps": 41}]})
SEQ_PARTS = [{"scheduler": "linear", "sched_hparams": {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 3}},
             {"scheduler": "exponential", "sched_hparams": {"gamma": 0.5}}]
SGD_HP = {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False, "maximize": False}
reply_ok("info_lookahead_sequential", "info of a session with lookahead and a sequential schedule", "info",
         {"lookahead": {"k": 5, "alpha": 0.5}, "durability": "interval", "session": "run1", "optimizer": "sgd",
          "optimizer_version": "1.0.0", "scheduler": "sequential", "schedulers": SEQ_PARTS, "milestones": [3],
          "hparams": SGD_HP, "sched_hparams": {}, "base_lr": 0.1, "lr": 0.01,
          "groups": [{"name": "default", "scheduler": "sequential", "schedulers": SEQ_PARTS, "milestones": [3],
                      "hparams": SGD_HP, "sched_hparams": {}, "base_lr": 0.1, "lr": 0.01, "params": 0}],
          "steps": 0, "params": []})
reply_ok("plugins", "one optimizer and one scheduler", "plugins",
         {"plugins": [
             {"id": "sgd", "kind": "optimizer", "version": "1.0.0", "description": "SGD",
              "hparams": [{"key": "lr", "type": "float", "required": True, "mutable": True, "min": 0.0,
                           "max": 1000000.0, "min_exclusive": False, "max_exclusive": False,
                           "default": None, "doc": "Learning rate."},
                          {"key": "nesterov", "type": "bool", "required": False, "mutable": False,
                           "min": 0.0, "max": 1.0, "min_exclusive": False, "max_exclusive": False,
                           "default": False, "doc": "Nesterov momentum."}],
              "slots": [{"key": "momentum_buffer", "dtype": "param", "shape": "param",
                         "enabled_by": None, "doc": "Momentum buffer."}],
              "dtypes": ["f32", "f64"], "sliced": True},
             {"id": "adafactor", "kind": "optimizer", "version": "1.0.0", "description": "Adafactor",
              "hparams": [{"key": "lr", "type": "float", "required": False, "mutable": True, "min": 0.0,
                           "max": 1000000.0, "min_exclusive": False, "max_exclusive": False,
                           "default": 0.001, "doc": "Learning rate."}],
              "slots": [{"key": "row", "dtype": "f32", "shape": "rows", "enabled_by": None, "doc": "R."},
                        {"key": "col", "dtype": "f32", "shape": "cols", "enabled_by": None, "doc": "C."},
                        {"key": "n", "dtype": "f64", "shape": "scalar", "enabled_by": "use_n",
                         "doc": "N."}],
              "dtypes": ["f32"], "sliced": False},
             {"id": "step", "kind": "scheduler", "version": "1.0.0", "description": "StepLR",
              "hparams": [{"key": "step_size", "type": "int", "required": True, "mutable": False,
                           "min": 1.0, "max": 2147483647.0, "min_exclusive": False,
                           "max_exclusive": False, "default": None, "doc": "Epochs."}],
              }]})
# A float32-encoded lr must read as the same number.
raw = (b"\x88" + pack("v") + pack(1) + pack("id") + pack(REQUEST_ID) + pack("ok") + pack(True)
       + pack("steps") + pack(1) + pack("lr") + b"\xca" + struct.pack(">f", 0.5)
       + pack("next_lr") + b"\xca" + struct.pack(">f", 0.25) + pack("duplicate") + pack(False)
       + pack("params") + pack({}))
reply_ok("step_float32_lr", "lr as msgpack float32", "step",
         {"steps": 1, "lr": 0.5, "next_lr": 0.25, "duplicate": False, "params": {}}, raw=raw)

# ---- replies: errors -----------------------------------------------------
reply_error("bad_token", "a wrong token", "step", 21, "BAD_TOKEN")
reply_error("unknown_session", "a session that does not exist", "info", 20, "UNKNOWN_SESSION")
reply_error("session_exists", "open of a taken name", "open", 22, "SESSION_EXISTS")
reply_error("unknown_plugin", "open with an unknown optimizer", "open", 10, "UNKNOWN_PLUGIN")
reply_error("bad_hparam", "a hyperparameter out of range", "set_hparams", 13, "BAD_HPARAM")
reply_error("nonfinite", "a NaN gradient", "step", 33, "NONFINITE")
reply_error("bad_tensor", "a gradient of the wrong shape", "step", 32, "BAD_TENSOR")
reply_error("storage", "the state directory is full", "step", 53, "STORAGE")
reply_error("malformed_id0", "an undecodable request is answered with id 0", "step", 1, "MALFORMED",
            rid=0)

# ---- replies: invalid (the client must report a protocol error) ----------
def ok_step(**over):
    body = {"v": 1, "id": REQUEST_ID, "ok": True, "steps": 1, "lr": 0.5, "next_lr": 0.5,
            "duplicate": False}
    body.update(over)
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()
reply_invalid("not_a_map", "an array, not a map", "hello", pack([1, 2, 3]))
reply_invalid("not_msgpack", "bytes that are not msgpack", "hello", b"\xc1\xc1\xc1")
reply_invalid("trailing_bytes", "a valid map followed by more bytes", "close",
              pack({"v": 1, "id": REQUEST_ID, "ok": True}) + b"\x00")
reply_invalid("wrong_id", "the id of another request", "close", pack({"v": 1, "id": 8, "ok": True}))
reply_invalid("wrong_version", "protocol version 2", "close", pack({"v": 2, "id": REQUEST_ID, "ok": True}))
reply_invalid("missing_ok", "no ok key", "close", pack({"v": 1, "id": REQUEST_ID}))
reply_invalid("ok_not_bool", "ok as an integer", "close", pack({"v": 1, "id": REQUEST_ID, "ok": 1}))
reply_invalid("steps_as_str", "steps of the wrong type", "step", pack(ok_step(steps="1")))
reply_invalid("missing_steps", "a step reply without steps", "step", pack(ok_step(steps=DROP)))
reply_invalid("short_tensor", "a tensor with fewer bytes than its shape needs", "pull",
              pack({"v": 1, "id": REQUEST_ID, "ok": True,
                    "params": {"w": {"dtype": "f32", "shape": [3], "data": b"\x00" * 8}}}))
reply_invalid("bad_dtype", "a tensor of an unknown dtype", "pull",
              pack({"v": 1, "id": REQUEST_ID, "ok": True,
                    "params": {"w": {"dtype": "f16", "shape": [2], "data": b"\x00" * 4}}}))
reply_invalid("data_as_str", "tensor data as a str, not bin", "pull",
              pack({"v": 1, "id": REQUEST_ID, "ok": True,
                    "params": {"w": {"dtype": "f32", "shape": [1], "data": "abcd"}}}))
reply_invalid("error_without_code", "an error reply without a code", "info",
              pack({"v": 1, "id": REQUEST_ID, "ok": False, "error": "BAD_TOKEN", "message": "x"}))
reply_invalid("token_not_str", "open's token as an integer", "open",
              pack({"v": 1, "id": REQUEST_ID, "ok": True, "session": "run1", "token": 5, "lr": 0.5,
                    "existing": False}))

json.dump({"protocol": 1,
           "about": "Conformance vectors for docs/protocol.md; schema in tests/protocol/README.md. "
                    "Generated by make_vectors.py; do not edit by hand.",
           "requests": requests, "replies": replies}, sys.stdout, indent=1)
sys.stdout.write("\n")
