"""Shards: contiguous blocks of rows, so that concatenating shards 0..n-1 restores the order."""

from __future__ import annotations

from scenesearch.errors import ConfigError


def block(n_items: int, shard: int, n_shards: int) -> slice:
    """Rows of `shard` among `n_items` split into `n_shards` near-equal contiguous blocks.

    Raises:
        ConfigError: shard out of range.
    """
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ConfigError(f"shard {shard} is not in 0..{n_shards - 1}")
    base, extra = divmod(n_items, n_shards)
    start = shard * base + min(shard, extra)
    return slice(start, start + base + (shard < extra))
