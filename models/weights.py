"""Reading a runner's weight files at the speed of the disk.

diffusers' and transformers' `from_pretrained` read a safetensors file through a memory map:
page faults of readahead size, one file after another, between the tensors' construction and
casts. On a cold disk that is far below its sequential speed. `read_ahead` reads the files
first, in large parallel ranges (several threads, a large file split between them), so the
bytes are in the page cache when `from_pretrained` maps them: the disk is read once, at its
speed, and the loading that follows reads memory. The page cache is the kernel's, shared with
the memory maps: nothing is held twice in the process.

It needs the page cache to hold the files: when they are larger than the memory available,
the read-ahead would evict its own first files, so it is skipped (and says so).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

# What a model folder's weights are stored as (the face models are ONNX files).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pth")
# One read: large enough that the disk streams, small enough that a big file is spread over
# every thread.
CHUNK_BYTES = 64 * 1024 * 1024
BUFFER_BYTES = 8 * 1024 * 1024
# The read-ahead runs only when the files fit in this share of the memory available.
PAGE_CACHE_SHARE = 0.8


@dataclass(frozen=True)
class ReadAhead:
    """What `read_ahead` did: bytes read and how long it took (0 when skipped)."""

    files: int
    bytes: int
    seconds: float
    threads: int
    skipped: str | None = None  # why nothing was read

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


def weight_files(folders: Iterable[Path]) -> list[Path]:
    """Every weight file under `folders` (recursively), largest first."""
    files = {
        path
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES)
    }
    return sorted(files, key=lambda path: path.stat().st_size, reverse=True)


def read_ahead(files: list[Path], threads: int) -> ReadAhead:
    """Read `files` into the page cache with `threads` parallel readers (0: skip)."""
    total = sum(path.stat().st_size for path in files)
    if threads <= 0:
        return ReadAhead(len(files), 0, 0.0, 0, skipped="off (DEPTHID_WEIGHTS_READ_THREADS=0)")
    available = psutil.virtual_memory().available
    if total > PAGE_CACHE_SHARE * available:
        reason = (
            f"{total / 1e9:.1f} GB of weights do not fit the page cache "
            f"({available / 1e9:.1f} GB available)"
        )
        logger.info("weights read-ahead skipped: %s", reason)
        return ReadAhead(len(files), 0, 0.0, threads, skipped=reason)
    ranges = [
        (path, offset, min(CHUNK_BYTES, size - offset))
        for path in files
        for size in [path.stat().st_size]
        for offset in range(0, size, CHUNK_BYTES)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="read-ahead") as pool:
        read = sum(pool.map(_read_range, ranges))
    return ReadAhead(len(files), read, time.perf_counter() - started, threads)


def _read_range(span: tuple[Path, int, int]) -> int:
    """Read `length` bytes of `path` from `offset` (and drop them: the page cache keeps them)."""
    path, offset, length = span
    buffer = bytearray(min(BUFFER_BYTES, length))
    view = memoryview(buffer)
    done = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while done < length:
            # preadv releases the GIL: the threads' reads overlap.
            count = os.preadv(fd, [view[: min(len(buffer), length - done)]], offset + done)
            if count == 0:
                break
            done += count
    finally:
        os.close(fd)
    return done
