"""Telemetry history blocks: the byte layout of raw samples and of min/mean/max tiers.

A block holds one host's series (its GPUs, and gpu_idx -1 for the host itself) over a span
of time, four fields each: util (%, the host's CPU % on its own series), mem (bytes used),
temp (degrees C) and power (watts). Values are stored as integers: tenths of a percent, a
degree or a watt, and whole MiB; the largest value of each type means "not reported".

Raw blocks (one per host and engine flush) keep every sample with its time and are written
by `encode_raw`, which needs only the standard library so the engine's ingest path does not
import numpy. Tier blocks keep, per bucket of `step` seconds, the count of samples that
reported each field, the seconds they covered, and the min, mean and max of each field (a
count per field keeps means exact when a field is missing from some samples); their payload
is zlib-compressed. Everything else here is
numpy: decoding, and `rebucket`, which turns samples or finer buckets into coarser buckets.

Layout, little-endian, series-major (each series' values over time are contiguous):
  raw:  b"CR" u8 version, u16 S, u32 N | i16 series[S] | f64 times[N] | per field: [S*N]
  tier: b"CT" u8 version (2), u8 flags, u16 S, u32 T, i64 first bucket, f64 step |
        payload: i16 series[S] | u32 bucket offsets[T] | uN n[4*S*T] | uN ds[S*T] |
        per field: min[S*T], mean[S*T], max[S*T]
  flags: bit 0 zlib, bits 1-2 N (0: u8, 1: u16, 2: u32); version 1 blocks (u8 zlib flag,
  one u32 count per series and point) are still read
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Floats = npt.NDArray[np.float64]
    Ints = npt.NDArray[np.int64]

FIELDS = ("util", "mem", "temp", "power")
# Per field: array typecode, numpy dtype, stored units per reported unit.
_UTIL_SCALE, _MEM_SCALE, _TEMP_SCALE, _POWER_SCALE = 10.0, 1.0 / 2**20, 10.0, 10.0
_TYPECODES = ("H", "I", "H", "H")
_DTYPES = ("<u2", "<u4", "<u2", "<u2")
_SCALES = (_UTIL_SCALE, _MEM_SCALE, _TEMP_SCALE, _POWER_SCALE)
_MISSING = (0xFFFF, 0xFFFFFFFF, 0xFFFF, 0xFFFF)  # the "not reported" value of each type
_RAW_HEAD = struct.Struct("<2sBHI")
_TIER_HEAD = struct.Struct("<2sBBHIqd")
_ZLIB_FLAG = 1  # tier header flags: bit 0 zlib payload, bits 1-2 the counts' type
_COUNT_TYPES = ("<u1", "<u2", "<u4")
_VERSION = 1  # of raw blocks
_TIER_VERSION = 2
ZLIB_LEVEL_KEPT = 3  # chunks kept for weeks: 2% larger than level 6, 3x faster to write
ZLIB_LEVEL_PIECE = 1  # hourly pieces, merged (and compressed again) within a day
_LITTLE = sys.byteorder == "little"


class HistoryFormatError(ValueError):
    """A stored block that this cvtui cannot read (corrupt, or from a newer version)."""


def _quantize(value: float | int | None, field: int) -> int:
    if value is None or not math.isfinite(value):
        return _MISSING[field]
    return min(_MISSING[field] - 1, max(0, round(value * _SCALES[field])))


def encode_raw(
    series: Sequence[int], times: Sequence[float], values: Sequence[Sequence[Sequence[Any]]]
) -> bytes:
    """A raw block: values[field][series][sample] (None when not reported), no numpy needed."""
    parts = [_RAW_HEAD.pack(b"CR", _VERSION, len(series), len(times))]
    columns: list[array[Any]] = [array("h", series), array("d", times)]
    for field, per_series in enumerate(values):
        columns.append(
            array(
                _TYPECODES[field],
                [_quantize(v, field) for samples in per_series for v in samples],
            )
        )
    for column in columns:
        if not _LITTLE:
            column.byteswap()
        parts.append(column.tobytes())
    return b"".join(parts)


@dataclass
class Block:
    """Decoded history of one host: buckets (or samples) x series, four fields each.

    ``n[f, s, t]`` counts the samples behind a point that reported field f (1 or 0 for raw
    samples) and ``secs[s, t]`` the seconds the point's samples cover (a sample covers the
    time to the next one, gaps left out);
    ``lo``, ``mean`` and ``hi`` are float arrays [field, series, time] in reported units,
    NaN where missing.
    ``step`` is 0 for raw samples, whose ``times`` are sample times; else bucket starts.
    """

    step: float
    series: Ints
    times: Floats
    n: Ints
    secs: Floats
    lo: Floats
    mean: Floats
    hi: Floats

    @property
    def end(self) -> float:
        """Where the block's last point ends (a sample's own time for raw blocks)."""
        return float(self.times[-1]) + self.step if len(self.times) else 0.0

    def row(self, index: int) -> int | None:
        """The position of series ``index`` (a GPU index, -1 for the host), or None."""
        found = [i for i, s in enumerate(self.series.tolist()) if s == index]
        return found[0] if found else None


def _dequantize(raw: Any, field: int) -> Floats:
    import numpy as np

    out: Floats = np.multiply(raw, 1.0 / _SCALES[field], dtype=np.float64)
    out[raw == _MISSING[field]] = np.nan
    return out


def _decode_raw_arrays(blobs: Sequence[bytes]) -> Block:
    """Raw blocks of one host, in time order, as one Block (series are the union of all)."""
    if not blobs:
        return empty_block(0.0)
    head = _header_len(blobs[0])
    same = all(len(b) == len(blobs[0]) and b[:head] == blobs[0][:head] for b in blobs)
    if same:
        return _decode_same_layout(blobs)
    parts = [_decode_same_layout([blob]) for blob in blobs]
    return concat_blocks(parts, 0.0)


def _header_len(blob: bytes) -> int:
    magic, version, count, _ = _RAW_HEAD.unpack_from(blob)
    if magic != b"CR" or version != _VERSION:
        raise HistoryFormatError(f"not a raw history block (magic {magic!r}, version {version})")
    return int(_RAW_HEAD.size + 2 * count)


def _decode_same_layout(blobs: Sequence[bytes]) -> Block:
    """Blocks with one layout (same series, same sample count) decoded in one numpy pass."""
    import numpy as np

    _, _, count, samples = _RAW_HEAD.unpack_from(blobs[0])
    cells = count * samples
    dtype = np.dtype(
        [
            ("head", f"V{_RAW_HEAD.size}"),
            ("series", "<i2", (count,)),
            ("times", "<f8", (samples,)),
            *((name, _DTYPES[i], (cells,)) for i, name in enumerate(FIELDS)),
        ]
    )
    if dtype.itemsize != len(blobs[0]):
        raise HistoryFormatError(f"raw history block of {len(blobs[0])} bytes, expected more")
    rows = np.frombuffer(b"".join(blobs), dtype=dtype)
    times = rows["times"].reshape(-1)
    values = []
    for i, name in enumerate(FIELDS):
        # [row, series, sample] -> [series, row * samples + sample]
        grid = rows[name].reshape(len(rows), count, samples).transpose(1, 0, 2)
        values.append(_dequantize(grid.reshape(count, -1), i))
    stacked = np.stack(values)
    known = ~np.isnan(stacked)
    return Block(
        0.0,
        rows["series"][0].astype(np.int64),
        times,
        np.asarray(known, dtype=np.int64),
        np.asarray(known.any(axis=0), dtype=np.float64),
        stacked,
        stacked,
        stacked,
    )


def decode_raw(blobs: Sequence[bytes]) -> Block:
    """Raw blocks of one host as one Block of samples, oldest first, each sample covering
    the time to the next (at most twice the usual spacing: a longer gap is no data)."""
    import numpy as np

    block = sort_block(_decode_raw_arrays(blobs))
    if len(block.times) > 1:
        spacing = np.diff(block.times)
        usual = float(np.median(spacing))
        covered = np.minimum(np.r_[spacing, usual], 2 * usual)
    else:
        covered = np.ones(len(block.times))
    block.secs = block.secs * covered
    return block


def sort_block(block: Block) -> Block:
    import numpy as np

    if not (block.times[1:] < block.times[:-1]).any():
        return block
    return take_points(block, np.argsort(block.times, kind="stable"))


def empty_block(step: float) -> Block:
    import numpy as np

    fields = np.zeros((len(FIELDS), 0, 0))
    return Block(
        step,
        np.zeros(0, np.int64),
        np.zeros(0),
        np.zeros((len(FIELDS), 0, 0), np.int64),
        np.zeros((0, 0)),
        fields,
        fields,
        fields,
    )


def concat_blocks(blocks: Sequence[Block], step: float) -> Block:
    """Blocks of one host side by side in time; a series missing from one is NaN there."""
    import numpy as np

    blocks = [b for b in blocks if len(b.times)]
    if not blocks:
        return empty_block(step)
    series = sorted({int(s) for b in blocks for s in b.series.tolist()})
    if all(b.series.tolist() == series for b in blocks):
        return Block(
            step,
            np.array(series, np.int64),
            np.concatenate([b.times for b in blocks]),
            np.concatenate([b.n for b in blocks], axis=2),
            np.concatenate([b.secs for b in blocks], axis=1),
            np.concatenate([b.lo for b in blocks], axis=2),
            np.concatenate([b.mean for b in blocks], axis=2),
            np.concatenate([b.hi for b in blocks], axis=2),
        )
    position = {s: i for i, s in enumerate(series)}
    width = sum(len(b.times) for b in blocks)
    n = np.zeros((len(FIELDS), len(series), width), np.int64)
    secs = np.zeros((len(series), width))
    lo, mean, hi = (np.full((len(FIELDS), len(series), width), np.nan) for _ in range(3))
    at = 0
    for b in blocks:
        rows = [position[int(s)] for s in b.series.tolist()]
        span = slice(at, at + len(b.times))
        n[:, rows, span] = b.n
        secs[rows, span] = b.secs
        lo[:, rows, span], mean[:, rows, span], hi[:, rows, span] = b.lo, b.mean, b.hi
        at += len(b.times)
    times = np.concatenate([b.times for b in blocks])
    return Block(step, np.array(series, np.int64), times, n, secs, lo, mean, hi)


def rebucket(block: Block, step: float) -> Block:
    """Points of ``step`` seconds from samples or finer (or equal, unmerged) buckets.

    min of mins, max of maxes, and means weighted by their sample counts, so a bucket is the
    same whether it was made from samples at once or from finer buckets in several passes.
    """
    import numpy as np

    if step <= 0:
        raise ValueError(f"a history step must be positive, got {step}")
    if not len(block.times):
        return empty_block(step)
    buckets = np.floor(block.times / step).astype(np.int64)
    if (buckets[1:] < buckets[:-1]).any():  # pieces side by side: put buckets in order
        order = np.argsort(buckets, kind="stable")
        block = take_points(block, order)
        buckets = buckets[order]
    alone = buckets[1:] != buckets[:-1]
    if alone.all():  # one point per bucket (a tier read at its own step): nothing to merge
        return replace(block, step=step, times=buckets.astype(np.float64) * step)
    first = int(np.argmin(alone))  # buckets before the first shared one pass through as they are
    if first > 0:
        head = replace(
            take_points(block, slice(0, first)),
            step=step,
            times=buckets[:first].astype(np.float64) * step,
        )
        return concat_blocks([head, rebucket(take_points(block, slice(first, None)), step)], step)
    starts = np.flatnonzero(np.r_[True, alone])
    n = block.n
    if block.step == 0:  # samples: n is 1 exactly where the value is known
        total = np.add.reduceat(np.nan_to_num(block.mean, nan=0.0), starts, axis=2)
        count = np.add.reduceat(n, starts, axis=2)
    else:
        known = ~np.isnan(block.mean)
        weights = np.where(known, n.astype(np.float64), 0.0)
        total = np.add.reduceat(np.where(known, block.mean, 0.0) * weights, starts, axis=2)
        count = np.add.reduceat(weights, starts, axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return Block(
        step,
        block.series,
        buckets[starts].astype(np.float64) * step,
        np.add.reduceat(n, starts, axis=2),
        np.add.reduceat(block.secs, starts, axis=1),
        np.fmin.reduceat(block.lo, starts, axis=2),
        means,
        np.fmax.reduceat(block.hi, starts, axis=2),
    )


def only_series(block: Block, index: int | None) -> Block:
    """The block with series ``index`` alone (empty when it lacks it); None: as it is."""
    if index is None:
        return block
    row = block.row(index)
    if row is None:
        return empty_block(block.step)
    rows = slice(row, row + 1)
    return Block(
        block.step,
        block.series[rows],
        block.times,
        block.n[:, rows],
        block.secs[rows],
        block.lo[:, rows],
        block.mean[:, rows],
        block.hi[:, rows],
    )


def take_points(block: Block, index: Any) -> Block:
    """The block's points picked by index (an index array or a slice), every series kept."""
    return Block(
        block.step,
        block.series,
        block.times[index],
        block.n[:, :, index],
        block.secs[:, index],
        block.lo[:, :, index],
        block.mean[:, :, index],
        block.hi[:, :, index],
    )


def encode_tier(block: Block, *, level: int = ZLIB_LEVEL_KEPT) -> bytes:
    """A tier block (zlib-compressed at ``level``) from a Block of buckets."""
    import numpy as np

    buckets = np.round(block.times / block.step).astype(np.int64)
    first = int(buckets[0]) if len(buckets) else 0
    tenths = np.clip(np.round(block.secs * 10), 0, 0xFFFFFFFF)
    # Counts and tenths of seconds in the narrowest integer that holds them: a 10 s tier
    # needs one byte where a day's buckets need four, and zlib then reads less.
    width = _count_width(max(int(block.n.max(initial=0)), int(tenths.max(initial=0))))
    count_type = _COUNT_TYPES[width]
    parts = [
        block.series.astype("<i2").tobytes(),
        (buckets - first).astype("<u4").tobytes(),
        np.minimum(block.n, 0xFFFFFFFF).astype(count_type).tobytes(),
        tenths.astype(count_type).tobytes(),
    ]
    for field in range(len(FIELDS)):
        stats = np.stack((block.lo[field], block.mean[field], block.hi[field]))
        parts.append(_quantize_array(stats, field).tobytes())  # min, mean, max in a row
    payload = zlib.compress(b"".join(parts), level)
    flags = _ZLIB_FLAG | width << 1
    head = _TIER_HEAD.pack(
        b"CT", _TIER_VERSION, flags, len(block.series), len(block.times), first, block.step
    )
    return head + payload


def _count_width(largest: int) -> int:
    """Index into _COUNT_TYPES of the narrowest type holding ``largest``."""
    return 0 if largest < 1 << 8 else 1 if largest < 1 << 16 else 2


def _quantize_array(values: Floats, field: int) -> Any:
    import numpy as np

    missing = _MISSING[field]
    unknown = np.isnan(values)
    scaled = values * _SCALES[field]
    np.round(scaled, out=scaled)
    np.clip(scaled, 0, missing - 1, out=scaled)
    scaled[unknown] = missing  # exactly representable: the largest value of the type
    return scaled.astype(_DTYPES[field])


def decode_tier(blob: bytes, only: int | None = None) -> Block:
    """A tier block; with ``only``, that series alone (empty when the block lacks it), so a
    one-GPU read does not dequantize the host's other series."""
    import numpy as np

    try:
        magic, version, flags, count, width, first, step = _TIER_HEAD.unpack_from(blob)
    except struct.error as exc:
        raise HistoryFormatError(f"history block too short: {exc}") from exc
    if magic != b"CT" or version not in (1, _TIER_VERSION):
        raise HistoryFormatError(f"not a tier history block (magic {magic!r}, version {version})")
    payload = blob[_TIER_HEAD.size :]
    if flags & _ZLIB_FLAG:
        payload = zlib.decompress(payload)
    count_type = "<u4" if version == 1 else _COUNT_TYPES[flags >> 1 & 3]
    at = 0

    def take(dtype: str, size: int) -> Any:
        nonlocal at
        item = np.dtype(dtype).itemsize
        out = np.frombuffer(payload, dtype=dtype, count=size, offset=at)
        at += item * size
        return out

    series = take("<i2", count).astype(np.int64)
    rows = slice(None)  # every series
    if only is not None:
        found = np.flatnonzero(series == only)
        if not len(found):
            return empty_block(step)
        rows = slice(int(found[0]), int(found[0]) + 1)
    times = (take("<u4", width).astype(np.int64) + first).astype(np.float64) * step
    if version == 1:  # one count for every field
        per_series = take("<u4", count * width).reshape(count, width)[rows].astype(np.int64)
        n = np.repeat(per_series[None], len(FIELDS), axis=0)
    else:
        n = take(count_type, len(FIELDS) * count * width).reshape(len(FIELDS), count, width)
        n = n[:, rows].astype(np.int64)
    secs = take(count_type, count * width).reshape(count, width)[rows].astype(np.float64) / 10
    stats: list[list[Floats]] = [[], [], []]
    for field in range(len(FIELDS)):
        for which in range(3):
            raw = take(_DTYPES[field], count * width).reshape(count, width)[rows]
            stats[which].append(_dequantize(raw, field))
    lo, mean, hi = (np.stack(s) if s else np.zeros((len(FIELDS), 0, 0)) for s in stats)
    return Block(step, series[rows], times, n, secs, lo, mean, hi)


def encode_raw_many(series: Sequence[int], times: Floats, values: Floats) -> list[bytes]:
    """Raw blocks for many rows of one layout at once: times[row, sample] and
    values[field, row, series, sample]; each block is what encode_raw would write."""
    import numpy as np

    rows, samples = times.shape
    count = len(series)
    cells = count * samples
    dtype = np.dtype(
        [
            ("head", f"V{_RAW_HEAD.size}"),
            ("series", "<i2", (count,)),
            ("times", "<f8", (samples,)),
            *((name, _DTYPES[i], (cells,)) for i, name in enumerate(FIELDS)),
        ]
    )
    out = np.zeros(rows, dtype=dtype)
    out["head"] = np.frombuffer(
        _RAW_HEAD.pack(b"CR", _VERSION, count, samples), f"V{_RAW_HEAD.size}"
    )[0]
    out["series"] = np.asarray(series, "<i2")
    out["times"] = times
    for field, name in enumerate(FIELDS):
        out[name] = _quantize_array(values[field], field).reshape(rows, cells)
    data = out.tobytes()
    size = dtype.itemsize
    return [data[i * size : (i + 1) * size] for i in range(rows)]
