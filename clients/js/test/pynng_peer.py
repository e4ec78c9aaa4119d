"""NNG's own REQ0/REP0 (through pynng) as the peer of the client's SP code.

  pynng_peer.py rep URL   REP0 listening on URL; prints "READY <url>", then
                          answers each request with b"re:" + request, until a
                          request b"quit" (answered too) or 60 s without one.
  pynng_peer.py req URL   REQ0 dialing URL; sends the requests of
                          payloads() in order, checks each reply is b"re:" +
                          request, prints "OK <n>" and exits 0 (1 otherwise).
  pynng_peer.py pair URL  PAIR1 listening on URL (a wrong peer for REQ0);
                          prints "READY <url>", lives 60 s.
"""

import sys
import time

import pynng


def payloads() -> list[bytes]:
    # Empty, small, one with every byte value, and large ones that cross
    # many TCP reads (a few MiB, not a multiple of any buffer size).
    return [
        b"",
        b"hello",
        bytes(range(256)) * 3,
        bytes((i * 7 + 3) % 251 for i in range(3 * 1024 * 1024 + 17)),
        b"x" * 70000,
    ]


def bound_url(sock: "pynng.Socket", url: str) -> str:
    if url.startswith("tcp://"):
        # str() of the listener's address is "127.0.0.1:PORT".
        return f"tcp://{sock.listeners[0].local_address}"
    return url


def rep(url: str) -> int:
    with pynng.Rep0(listen=url, recv_timeout=60000, recv_max_size=0) as sock:
        print("READY", bound_url(sock, url), flush=True)
        while True:
            try:
                msg = sock.recv()
            except pynng.Timeout:
                return 1
            sock.send(b"re:" + msg)
            if msg == b"quit":
                # Let the reply leave before the socket closes.
                time.sleep(0.2)
                return 0


def req(url: str) -> int:
    with pynng.Req0(dial=url, recv_timeout=30000, send_timeout=30000, recv_max_size=0) as sock:
        n = 0
        for p in payloads():
            sock.send(p)
            reply = sock.recv()
            if reply != b"re:" + p:
                print(f"request {n}: wrong reply of {len(reply)} bytes", flush=True)
                return 1
            n += 1
        print("OK", n, flush=True)
        return 0


def pair(url: str) -> int:
    with pynng.Pair1(listen=url) as sock:
        print("READY", bound_url(sock, url), flush=True)
        time.sleep(60)
    return 0


if __name__ == "__main__":
    mode, address = sys.argv[1], sys.argv[2]
    sys.exit({"rep": rep, "req": req, "pair": pair}[mode](address))
