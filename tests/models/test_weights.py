"""models/weights.py: the read-ahead reads every byte of a runner's weight files, split in
ranges over its threads, and is skipped when asked to or when the files cannot stay cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import weights


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return path


def test_weight_files_are_the_weights_only_largest_first(tmp_path):
    big = write(tmp_path / "a" / "unet" / "model.fp16.safetensors", 5000)
    small = write(tmp_path / "b" / "model.onnx", 300)
    write(tmp_path / "a" / "unet" / "config.json", 10_000)
    assert weights.weight_files([tmp_path / "a", tmp_path / "b"]) == [big, small]


def test_read_ahead_reads_every_byte_in_ranges(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(weights, "CHUNK_BYTES", 1000)  # a file spread over several ranges
    monkeypatch.setattr(weights, "BUFFER_BYTES", 300)
    files = [write(tmp_path / "x.safetensors", 4321), write(tmp_path / "y.bin", 77)]
    done = weights.read_ahead(files, threads=3)
    assert done.skipped is None
    assert (done.files, done.bytes, done.threads) == (2, 4321 + 77, 3)


def test_read_ahead_is_skipped_when_off_or_larger_than_memory(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    files = [write(tmp_path / "x.safetensors", 4096)]
    assert "off" in weights.read_ahead(files, threads=0).skipped

    class Memory:
        available = 1000

    monkeypatch.setattr(weights.psutil, "virtual_memory", lambda: Memory())
    skipped = weights.read_ahead(files, threads=2)
    assert skipped.bytes == 0 and "do not fit" in skipped.skipped
