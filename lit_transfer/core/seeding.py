"""Seeds derived from several integers (seed, epoch, index, rank), identical on every machine."""

from __future__ import annotations

import hashlib


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers, the same on every machine and Python version."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
