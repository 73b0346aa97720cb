"""Turn a validated request into what a runner needs: a resolved seed and output size."""

from __future__ import annotations

import secrets

MAX_SEED = 999_999_999_999_999  # the contract's seed range is 0..MAX_SEED; -1 draws one


def resolve_seed(seed: int) -> int:
    """`seed` itself, or a random one from the contract's range when it is -1."""
    return secrets.randbelow(MAX_SEED + 1) if seed == -1 else seed


def output_size(width: int, height: int, long_side: int, multiple: int) -> tuple[int, int]:
    """Keep the aspect ratio of width x height, scale the long side to `long_side`, and round
    both sides to the nearest multiple of `multiple` (at least one multiple)."""
    scale = long_side / max(width, height)

    def snap(side: int) -> int:
        return max(multiple, round(side * scale / multiple) * multiple)

    return snap(width), snap(height)
