"""Test-side access to a real optimd: start the daemon, speak the wire
protocol through libnng (ctypes) and msgpack. Used by the integration tests;
it is deliberately small and independent of the C client, so the two check
each other."""
import ctypes
import ctypes.util
import faulthandler
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time

import msgpack

# A test that hangs prints every thread's stack and exits before CTest's
# timeout kills it silently (which would leave no clue where it hung).
faulthandler.dump_traceback_later(int(os.environ.get("OPTIMD_TEST_WATCHDOG_S", "540")), exit=True)

_lib = ctypes.CDLL(ctypes.util.find_library("nng") or "libnng.so.1")


class _Socket(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32)]


_lib.nng_req0_open.argtypes = [ctypes.POINTER(_Socket)]
_lib.nng_dial.argtypes = [_Socket, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
_lib.nng_send.argtypes = [_Socket, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_lib.nng_recv.argtypes = [_Socket, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_int]
_lib.nng_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_lib.nng_socket_set_ms.argtypes = [_Socket, ctypes.c_char_p, ctypes.c_int32]
_lib.nng_socket_set_size.argtypes = [_Socket, ctypes.c_char_p, ctypes.c_size_t]
_lib.nng_close.argtypes = [_Socket]
_lib.nng_strerror.restype = ctypes.c_char_p
_lib.nng_dialer_create.argtypes = [ctypes.c_void_p, _Socket, ctypes.c_char_p]
_lib.nng_dialer_set_ptr.argtypes = [_Socket, ctypes.c_char_p, ctypes.c_void_p]
_lib.nng_dialer_start.argtypes = [_Socket, ctypes.c_int]
_lib.nng_tls_config_alloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
_lib.nng_tls_config_ca_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.nng_tls_config_own_cert.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
_lib.nng_tls_config_server_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.nng_tls_config_auth_mode.argtypes = [ctypes.c_void_p, ctypes.c_int]
_lib.nng_tls_config_free.argtypes = [ctypes.c_void_p]
NNG_FLAG_ALLOC = 1
NNG_TLS_MODE_CLIENT = 0
NNG_TLS_AUTH_MODE_REQUIRED = 2


class NngError(Exception):
    def __init__(self, what, rv):
        super().__init__(f"{what}: {_lib.nng_strerror(rv).decode()} ({rv})")
        self.rv = rv


class Req:
    """One REQ socket: send bytes, receive bytes."""

    def __init__(self, url, timeout_ms=10000, tls=None):
        """`tls`: {"ca": PEM file, "cert": PEM file, "key": PEM file,
        "server_name": name} for a tls+tcp:// url (cert and key optional)."""
        self.sock = _Socket()
        rv = _lib.nng_req0_open(ctypes.byref(self.sock))
        if rv:
            raise NngError("req0_open", rv)
        _lib.nng_socket_set_ms(self.sock, b"recv-timeout", timeout_ms)
        _lib.nng_socket_set_ms(self.sock, b"send-timeout", timeout_ms)
        _lib.nng_socket_set_size(self.sock, b"recv-size-max", 0)
        # A step is not idempotent: never let REQ resend it (docs/protocol.md).
        _lib.nng_socket_set_ms(self.sock, b"req:resend-time", -1)
        if tls is None:
            rv = _lib.nng_dial(self.sock, url.encode(), None, 0)
            if rv:
                raise NngError("dial " + url, rv)
            return
        dialer = _Socket()
        cfg = ctypes.c_void_p()
        rv = _lib.nng_dialer_create(ctypes.byref(dialer), self.sock, url.encode())
        rv = rv or _lib.nng_tls_config_alloc(ctypes.byref(cfg), NNG_TLS_MODE_CLIENT)
        rv = rv or _lib.nng_tls_config_ca_file(cfg, tls["ca"].encode())
        rv = rv or _lib.nng_tls_config_server_name(cfg, tls.get("server_name", "localhost").encode())
        rv = rv or _lib.nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED)
        if not rv and tls.get("cert"):
            with open(tls["cert"], "rb") as c, open(tls["key"], "rb") as k:
                rv = _lib.nng_tls_config_own_cert(cfg, c.read(), k.read(), None)
        rv = rv or _lib.nng_dialer_set_ptr(dialer, b"tls-config", cfg)
        rv = rv or _lib.nng_dialer_start(dialer, 0)
        if cfg:
            _lib.nng_tls_config_free(cfg)
        if rv:
            raise NngError("dial " + url, rv)

    def roundtrip_bytes(self, payload):
        rv = _lib.nng_send(self.sock, payload, len(payload), 0)
        if rv:
            raise NngError("send", rv)
        ptr = ctypes.c_void_p()
        size = ctypes.c_size_t()
        rv = _lib.nng_recv(self.sock, ctypes.byref(ptr), ctypes.byref(size), NNG_FLAG_ALLOC)
        if rv:
            raise NngError("recv", rv)
        data = ctypes.string_at(ptr, size.value)
        _lib.nng_free(ptr, size.value)
        return data

    def call(self, op, **fields):
        req = {"v": 1, "id": fields.pop("id", 1), "op": op}
        req.update(fields)
        return msgpack.unpackb(self.roundtrip_bytes(msgpack.packb(req, use_bin_type=True)), raw=False)

    def close(self):
        _lib.nng_close(self.sock)


def tensor(array):
    """numpy array -> wire tensor map."""
    import numpy as np
    a = np.ascontiguousarray(array)
    dtype = {np.dtype("float32"): "f32", np.dtype("float64"): "f64"}[a.dtype]
    return {"dtype": dtype, "shape": list(a.shape), "data": a.astype(a.dtype.newbyteorder("<")).tobytes()}


def array(t):
    """wire tensor map -> numpy array."""
    import numpy as np
    dt = {"f32": "<f4", "f64": "<f8"}[t["dtype"]]
    return np.frombuffer(t["data"], dtype=dt).reshape(t["shape"])


class Daemon:
    """A real optimd on a free loopback port, stopped with SIGTERM."""

    def __init__(self, *extra_args, state_dir=None, max_file_bytes=None):
        """`state_dir`: reuse a state directory (a restart); default: a
        fresh one inside this daemon's temporary directory."""
        self.dir = tempfile.mkdtemp(prefix="optimd-test-")
        self.state_dir = state_dir or os.path.join(self.dir, "state")
        ready = os.path.join(self.dir, "ready")
        self.log_path = os.path.join(self.dir, "optimd.log")
        self.log = open(self.log_path, "w")
        args = [os.environ["OPTIMD_BIN"], "--listen", "tcp://127.0.0.1:0",
                "--plugin-dir", os.environ["OPTIMD_PLUGIN_DIR"],
                "--state-dir", self.state_dir, "--ready-file", ready, *extra_args]
        def limit_files():
            # Stands in for a full disk: writes past this size fail.
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=limit_files if max_file_bytes else None)
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.exists(ready):
                with open(ready) as f:
                    self.url = f.read().strip()
                return
            if self.proc.poll() is not None:
                raise RuntimeError("optimd exited during start-up:\n" + self.read_log())
            time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError("optimd not ready after 30 s")

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log.closed:
            self.log.close()

    def stop(self, timeout=15):
        """SIGTERM; returns the exit code (raises if it does not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("optimd ignored SIGTERM")
        self.log.close()
        return self.proc.returncode

    def cleanup(self):
        """Removes the temporary directory (log and default state)."""
        shutil.rmtree(self.dir, ignore_errors=True)
