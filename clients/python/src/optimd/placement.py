"""Rendezvous (highest-random-weight) placement of parameters on servers:
the rule :class:`optimd.Cluster` follows (its module docstring says why),
kept apart so that resharding and the cluster share it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["place", "rendezvous_weight"]


def rendezvous_weight(url: str, name: str) -> int:
    """The weight of parameter ``name`` on server ``url``: the 64-bit
    BLAKE2b digest of ``url``, a NUL byte and ``name`` (UTF-8), big-endian."""
    digest = hashlib.blake2b(f"{url}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def place(name: str, urls: Iterable[str]) -> str:
    """The URL among ``urls`` that holds parameter ``name``."""
    best: tuple[int, str] | None = None
    for url in urls:
        key = (rendezvous_weight(url, name), url)
        if best is None or key > best:
            best = key
    if best is None:
        raise ValueError("no servers to place a parameter on")
    return best[1]
