"""SHA-256 checksums of files, read in chunks so large weight files never sit whole in memory.

Used for model bundles and input checksums. Standard library only (no torch, Qt or Slicer).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 20


def sha256_file(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Compute the SHA-256 of a file's bytes and return it as 64 lowercase hex digits.

    Raises FileNotFoundError or another OSError when the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while True:
            chunk = stream.read(chunk_bytes)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Compute the SHA-256 of an in-memory byte string as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()
