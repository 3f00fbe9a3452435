"""FP8 KV-cache helpers for sparse decoding: the reference quantizer / dequantizer of the two
FP8 formats (V32: d_qk 576, 656 bytes per token; MODEL1: d_qk 512, 584 bytes per token), and
the mapping from logical token positions to the physical slots that ``indices`` holds."""
import numpy as np

from . import _C
from . import _tensors as T

_FORMATS = {"V32": _C.KvFormat.v32, "MODEL1": _C.KvFormat.model1}


def _format(fn, kv_format, last_dim, by_dim):
    if kv_format is None:
        return by_dim.get(last_dim, _C.KvFormat.v32)  # C++ reports a wrong last dim
    if isinstance(kv_format, _C.KvFormat):
        return kv_format
    if isinstance(kv_format, str) and kv_format.upper() in _FORMATS:
        return _FORMATS[kv_format.upper()]
    raise ValueError(f"{fn}: argument 'kv_format': expected 'V32', 'MODEL1' or None, "
                     f"got {kv_format!r}")


def quantize_kv_cache(k, kv_format=None):
    """Quantize a bf16 cache ``k`` (num_blocks, page_block_size, 1, d_qk) into an FP8 cache.

    ``kv_format``: "V32" or "MODEL1"; default from d_qk (576: V32, 512: MODEL1). Returns a new
    contiguous uint8 array (num_blocks, page_block_size, 1, 656 | 584), in k's framework.
    Scales are per token and tile: 2^ceil(log2(max(amax / 448, 1e-4))); RoPE stays bf16.
    """
    fn = "quantize_kv_cache"
    num_blocks, block, _, d_qk = T.shape_of(k, fn, "k", 4)
    fmt = _format(fn, kv_format, d_qk, {576: _C.KvFormat.v32, 512: _C.KvFormat.model1})
    cache = T.empty(k, (num_blocks, block, 1, _C.kv_format_info(fmt).bytes_per_token), "uint8")
    args = _C.KvQuantizeArgs()
    args.format = fmt
    T.set_views(args, fn, k=k, cache=cache)
    _C.quantize_kv_cache(args)
    return cache


def dequantize_kv_cache(cache, kv_format=None):
    """Dequantize an FP8 cache (num_blocks, page_block_size, 1, 656 | 584) of float8_e4m3fn,
    int8 or uint8, exactly as the sparse kernels read it.

    ``kv_format``: "V32" or "MODEL1"; default from the last dim (656: V32, 584: MODEL1).
    Returns a new contiguous bf16 array (num_blocks, page_block_size, 1, 576 | 512).
    """
    fn = "dequantize_kv_cache"
    num_blocks, block, _, width = T.shape_of(cache, fn, "cache", 4)
    fmt = _format(fn, kv_format, width, {656: _C.KvFormat.v32, 584: _C.KvFormat.model1})
    k = T.empty(cache, (num_blocks, block, 1, _C.kv_format_info(fmt).d_qk), "bf16")
    args = _C.KvQuantizeArgs()
    args.format = fmt
    T.set_views(args, fn, k=k, cache=cache)
    _C.dequantize_kv_cache(args)
    return k


def token_slots(block_table, positions, page_block_size: int):
    """Physical cache slots of logical token positions, as ``indices`` expects them.

    ``block_table`` (b, max_blocks_per_seq) int, ``positions`` (b, ..., n) int: token positions
    of each request. Returns int32 of positions' shape: ``block_table[i, p // B] * B + p % B``
    with B = page_block_size, and -1 where the position is negative (invalid).
    Raises ValueError for a position past the block table.
    """
    fn = "token_slots"
    bsz = T.to_int(page_block_size, fn, "page_block_size")
    if bsz < 1:
        raise ValueError(f"{fn}: argument 'page_block_size': expected >= 1, got {bsz}")
    if len(block_table.shape) != 2:
        raise ValueError(f"{fn}: argument 'block_table': expected rank 2, got rank "
                         f"{len(block_table.shape)}")
    b, max_blocks = (int(d) for d in block_table.shape)
    shape = tuple(int(d) for d in positions.shape)
    if not shape or shape[0] != b:
        raise ValueError(f"{fn}: argument 'positions': expected shape (b, ..., n) with b = {b}, "
                         f"got {shape}")
    n = 1
    for d in shape[1:]:
        n *= d
    past = f"{fn}: argument 'positions': a position is past the block table ({max_blocks} blocks)"
    if T.is_torch(positions):
        torch = T._torch()
        pos = positions.reshape(b, n).to(torch.int64)
        invalid = pos < 0
        pos = pos.masked_fill(invalid, 0)
        blk = torch.div(pos, bsz, rounding_mode="floor")
        if bool(((blk >= max_blocks) & ~invalid).any()):
            raise ValueError(past)
        table = block_table.to(device=pos.device, dtype=torch.int64)
        if max_blocks == 0:  # every position is invalid
            table = torch.zeros((b, 1), dtype=torch.int64, device=pos.device)
        slots = torch.gather(table, 1, blk) * bsz + pos % bsz
        return slots.masked_fill(invalid, -1).to(torch.int32).reshape(shape)
    pos = np.asarray(positions).reshape(b, n).astype(np.int64)
    invalid = pos < 0
    pos = np.where(invalid, 0, pos)
    blk = pos // bsz
    if ((blk >= max_blocks) & ~invalid).any():
        raise ValueError(past)
    table = np.asarray(block_table).astype(np.int64)
    if max_blocks == 0:  # every position is invalid
        table = np.zeros((b, 1), dtype=np.int64)
    slots = np.take_along_axis(table, blk, axis=1) * bsz + pos % bsz
    return np.where(invalid, -1, slots).astype(np.int32).reshape(shape)
