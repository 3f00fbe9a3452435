"""Array plumbing for the tests: the two call paths (NumPy arrays in -> NumPy out, torch tensors
in -> torch out), conversions for checking, and FlashMLA-style test-data generators (§6)."""

import numpy as np
import torch

from numpy_ref import BF16, FP8, FORMATS, quantize_kv, dequantize_kv, poison_tokens, token_slots

INT_GARBAGE = 2147480000


def to_np(x):
    """Any result (numpy array or torch tensor) -> numpy array with the same element type
    (bf16 as ml_dtypes.bfloat16), shape and strides."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            return x.view(torch.int16).numpy().view(BF16)
        return x.numpy()
    return np.asarray(x)


def elem_strides(x):
    if isinstance(x, torch.Tensor):
        return tuple(x.stride())
    return tuple(s // x.itemsize for s in x.strides)


class NumpyBackend:
    name = "numpy"

    def arr(self, a, dtype=None):
        a = np.asarray(a) if not isinstance(a, np.ndarray) else a
        return a if dtype is None else a.view(dtype)

    def native(self, x):
        return isinstance(x, np.ndarray)

    def dtype_of(self, x):
        """'bf16' | 'fp16' | 'fp32' | 'int32' | 'uint8' | 'int8' | 'fp8' | other"""
        return {BF16: "bf16", np.dtype(np.float16): "fp16", np.dtype(np.float32): "fp32",
                np.dtype(np.int32): "int32", np.dtype(np.uint8): "uint8",
                np.dtype(np.int8): "int8", FP8: "fp8"}.get(x.dtype, str(x.dtype))


class TorchBackend:
    name = "torch"

    def arr(self, a, dtype=None):
        """numpy -> torch sharing strides (a copy of the memory is not needed: from_numpy)."""
        a = np.asarray(a)
        if a.dtype == BF16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        if a.dtype == FP8:
            a = a.view(np.uint8)
        if dtype == "int8":
            return torch.from_numpy(a.view(np.int8))
        return torch.from_numpy(a)

    def native(self, x):
        return isinstance(x, torch.Tensor)

    def dtype_of(self, x):
        return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
                torch.int32: "int32", torch.uint8: "uint8", torch.int8: "int8"}.get(
                    x.dtype, str(x.dtype))


BACKENDS = {"numpy": NumpyBackend(), "torch": TorchBackend()}


def noncontig(a, pad_last=8, pad_other=1):
    """A non-contiguous copy of `a` (last dim contiguous): allocated larger, then sliced
    (FlashMLA's non_contiguousify pads the last dim by 128, other dims by 1)."""
    a = np.asarray(a)
    big_shape = tuple(n + pad_other for n in a.shape[:-1]) + (a.shape[-1] + pad_last,)
    big = np.zeros(big_shape, dtype=a.dtype)
    if big.dtype == BF16 or np.issubdtype(big.dtype, np.floating):
        big.fill(np.nan)
    else:
        big.fill(-7)
    view = big[tuple(slice(0, n) for n in a.shape)]
    view[...] = a
    return view


def padded_blocks(cache, extra_bytes):
    """Copy a (nb, B, 1, bpt) uint8 cache into storage with `extra_bytes` of padding after every
    block: stride(0) = B * bpt + extra_bytes, stride(1) = bpt (§4, conventions §7)."""
    nb, B, _, bpt = cache.shape
    stride0 = B * bpt + extra_bytes
    store = np.full(nb * stride0, 0xAB, dtype=np.uint8)
    view = np.lib.stride_tricks.as_strided(store, shape=(nb, B, 1, bpt),
                                           strides=(stride0, bpt, bpt, 1))
    view[...] = cache
    return view


# ------------------------------------------------------------------------------------------
# FlashMLA-style data generators (§6.2 - §6.5), at small sizes


def randn_bf16(rng, shape, div=10.0, clamp=1.0):
    x = rng.standard_normal(shape) / div
    if clamp is not None:
        x = np.clip(x, -clamp, clamp)
    return x.astype(np.float32).astype(BF16)


def seqlens_varlen(rng, b, s_k, s_q, varlen=True, zero_len=()):
    """cache_seqlens per §6.2: s_k, or max(N(s_k, s_k/2), s_q) when varlen; indices in
    `zero_len` get length 0."""
    if varlen:
        lens = [max(int(rng.normal(s_k, s_k / 2)), s_q) for _ in range(b)]
    else:
        lens = [s_k] * b
    for i in zero_len:
        lens[i] = 0
    return np.array(lens, dtype=np.int32)


def make_dense_case(rng, b, s_q, h_q, h_kv, s_k, varlen=True, zero_len=(), d=576, block=64,
                    dtype=BF16):
    """§6.2: q = randn/10 clamped; block table = random permutation of b·pad(max, 256)/block
    blocks; cache randn/10 clamped with every slot past each sequence NaN; unused table entries
    2147480000."""
    cache_seqlens = seqlens_varlen(rng, b, s_k, s_q, varlen, zero_len)
    max_len = int(cache_seqlens.max())
    per = max(-(-max_len // 256) * 256 // block, 1)
    num_blocks = b * per
    block_table = rng.permutation(num_blocks).reshape(b, per).astype(np.int32)
    q = (np.clip(rng.standard_normal((b, s_q, h_q, d)) / 10, -1, 1)).astype(np.float32)
    k = np.clip(rng.standard_normal((num_blocks, block, h_kv, d)) / 10, -1, 1).astype(np.float32)
    q = q.astype(dtype)
    k = k.astype(dtype)
    for i in range(b):
        L = int(cache_seqlens[i])
        used = -(-L // block)
        for j in range(per):
            blk = block_table[i, j]
            if j >= used:
                k[blk] = np.nan
            elif j == used - 1 and L % block:
                k[blk, L % block:] = np.nan
        block_table[i, used:] = INT_GARBAGE
    return q, k, block_table, cache_seqlens


def make_sparse_pool(rng, b, s_q, s_k, topk, block, fmt, varlen=True, with_length=False,
                     zero_len=(), all_invalid=False, garbage_past_length=True):
    """One KV pool of §6.3: returns dict with cache (uint8, NaN-poisoned where unreferenced),
    deq_flat ((slots, d_qk) dequantized bf16 of the clean cache), indices (b, s_q, topk) int32
    physical slots, topk_length (b,) int32 or None, block_table, abs_indices."""
    d_qk = FORMATS[fmt][0]
    lens = seqlens_varlen(rng, b, s_k, s_q, varlen, zero_len)
    max_len = max(int(lens.max()), 1)
    per = -(-max_len // (4 * block)) * 4
    num_blocks = b * per
    block_table = rng.permutation(num_blocks).reshape(b, per).astype(np.int32)
    k = randn_bf16(rng, (num_blocks, block, 1, d_qk))
    abs_idx = np.full((b, s_q, topk), -1, dtype=np.int64)
    if not all_invalid:
        for i in range(b):
            for s in range(s_q):
                n = min(topk, int(lens[i]))
                row = np.full(topk, -1, dtype=np.int64)
                row[:n] = rng.choice(int(lens[i]), n, replace=False)
                abs_idx[i, s] = rng.permutation(row)  # -1 anywhere in the row
    topk_length = rng.integers(0, topk + 1, b).astype(np.int32) if with_length else None
    indices = token_slots(block_table, abs_idx, block)
    referenced = np.zeros(num_blocks * block, dtype=bool)
    for i in range(b):
        n = topk if topk_length is None else int(topk_length[i])
        sl = indices[i, :, :n]
        referenced[sl[sl != -1]] = True
        if topk_length is not None and garbage_past_length:
            indices[i, :, n:] = INT_GARBAGE  # never read
    cache = quantize_kv(k, fmt)
    deq = dequantize_kv(cache, fmt)
    poison_tokens(cache, fmt, ~referenced.reshape(num_blocks, block))
    return dict(cache=cache, deq_flat=deq.reshape(num_blocks * block, d_qk), indices=indices,
                topk_length=topk_length, block_table=block_table, abs_indices=abs_idx,
                lens=lens, block=block, referenced=referenced)


def make_sink(rng, h_q):
    """attn_sink = randn(h_q) with ~31% +inf and ~31% -inf (§6.3), at least one of each and one
    finite when h_q >= 3."""
    sink = rng.standard_normal(h_q).astype(np.float32)
    u = rng.random(h_q)
    sink[u < 0.31] = np.inf
    sink[u > 0.69] = -np.inf
    if h_q >= 3:
        sink[0], sink[1], sink[2] = np.inf, -np.inf, 0.5
    return sink


def cu_from_lens(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
