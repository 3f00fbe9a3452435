"""Sparse MLA decode (flash_mla_with_kvcache with indices, FP8 V32 / MODEL1 caches; reference
§2.3, §3.3, §4, §6.3; conventions §7, §8) and sparse MLA prefill (flash_mla_sparse_fwd; §2.4,
§3.4, §6.4; conventions §6), checked against numpy_ref on FlashMLA-style data: the cache is
quantized by the NumPy quantizer, every token not referenced by a valid in-length index is NaN,
indices past topk_length hold garbage."""
import numpy as np
import pytest

import numpy_ref as R
from helpers import (BF16, INT_GARBAGE, elem_strides, make_sink, make_sparse_pool, noncontig,
                     padded_blocks, to_np)

DV = 512


def cache_in(backend, cache, cache_dtype):
    if cache_dtype == "fp8":
        return backend.arr(cache.view(R.FP8))
    if cache_dtype == "int8":
        return backend.arr(cache.view(np.int8), "int8")
    return backend.arr(cache)


def sparse_decode(fm, backend, q, pool, scale, sink=None, extra=None, cache_dtype="uint8",
                  sched=None, cache=None, extra_cache=None):
    if sched is None:
        sched, _ = fm.get_mla_metadata()
    A = backend.arr
    kw = {}
    if extra is not None:
        kw = dict(extra_k_cache=cache_in(backend, extra["cache"] if extra_cache is None
                                         else extra_cache, cache_dtype),
                  extra_indices_in_kvcache=A(extra["indices"]),
                  extra_topk_length=None if extra["topk_length"] is None
                  else A(extra["topk_length"]))
    return fm.flash_mla_with_kvcache(
        A(q), cache_in(backend, pool["cache"] if cache is None else cache, cache_dtype), None,
        None, DV, sched, None, softmax_scale=scale, is_fp8_kvcache=True,
        indices=A(pool["indices"]), attn_sink=None if sink is None else A(sink),
        topk_length=None if pool["topk_length"] is None else A(pool["topk_length"]), **kw)


def check_sparse_decode(backend, out, lse, q, pool, scale, sink=None, extra=None):
    b, s_q, h_q, _ = q.shape
    assert backend.native(out) and backend.native(lse)
    out_np, lse_np = to_np(out), to_np(lse)
    assert out_np.dtype == BF16 and lse_np.dtype == np.float32
    assert out_np.shape == (b, s_q, h_q, DV) and lse_np.shape == (b, h_q, s_q)
    assert elem_strides(out) == (s_q * h_q * DV, h_q * DV, DV, 1)
    # lse: transposed view of a contiguous (b, s_q, h_q) buffer
    assert elem_strides(lse) == (s_q * h_q, 1, h_q), elem_strides(lse)
    ref_out, ref_lse = R.ref_sparse_decode(
        q, pool["deq_flat"], pool["indices"], scale, pool["topk_length"], sink,
        None if extra is None else extra["deq_flat"], None if extra is None else extra["indices"],
        None if extra is None else extra["topk_length"])
    R.check("out", out_np, ref_out.astype(BF16), R.TOL_SPARSE_DEC_OUT)
    R.check("lse", lse_np, ref_lse.astype(np.float32), R.TOL_SPARSE_DEC_LSE)
    assert not np.isnan(out_np.astype(np.float32)).any()
    return out_np, lse_np


def set_lengths(pool, lengths):
    """Give a pool generated without lengths (every valid entry referenced, hence clean) a
    topk_length, with garbage past each length."""
    pool["topk_length"] = np.array(lengths, dtype=np.int32)
    for i, n in enumerate(lengths):
        pool["indices"][i, :, n:] = INT_GARBAGE


def q_for(rng, b, s_q, h_q, d):
    return np.clip(rng.standard_normal((b, s_q, h_q, d)), -1, 1).astype(np.float32).astype(BF16)


# fmt, b, s_q, h_q, s_k, topk, block, with_length, extra (s_k, topk, block, with_length), sink
DECODE_CASES = [
    (R.V32, 2, 1, 64, 200, 64, 64, False, None, True),
    (R.V32, 3, 2, 16, 300, 128, 61, False, None, False),
    (R.V32, 2, 2, 128, 150, 64, 2, True, None, True),
    (R.MODEL1, 2, 2, 64, 256, 128, 2, True, None, True),
    (R.MODEL1, 3, 1, 128, 200, 64, 64, True, (128, 64, 53, True), True),
    (R.MODEL1, 2, 2, 64, 150, 64, 69, False, (128, 64, 64, False), False),
    (R.V32, 2, 2, 64, 200, 64, 64, True, (128, 64, 2, True), True),  # extra with V32
]


@pytest.mark.parametrize("parts", [0, 32])
@pytest.mark.parametrize("fmt,b,s_q,h_q,s_k,topk,block,with_len,extra_cfg,with_sink",
                         DECODE_CASES)
def test_sparse_decode(fm, backend, rng, threads, fmt, b, s_q, h_q, s_k, topk, block, with_len,
                       extra_cfg, with_sink, parts):
    """parts 32: split requests, so the combine applies the sink."""
    threads(parts)
    d = R.FORMATS[fmt][0]
    q = q_for(rng, b, s_q, h_q, d)
    scale = d ** -0.55
    pool = make_sparse_pool(rng, b, s_q, s_k, topk, block, fmt, with_length=with_len)
    extra = None
    if extra_cfg is not None:
        es_k, etopk, eblock, elen = extra_cfg
        extra = make_sparse_pool(rng, b, s_q, es_k, etopk, eblock, fmt, with_length=elen)
    sink = make_sink(rng, h_q) if with_sink else None
    qn = noncontig(q)
    pool_nc = dict(pool, indices=noncontig(pool["indices"], pad_last=5))
    out, lse = sparse_decode(fm, backend, qn, pool_nc, scale, sink, extra)
    check_sparse_decode(backend, out, lse, q, pool, scale, sink, extra)


@pytest.mark.parametrize("fmt", [R.V32, R.MODEL1])
@pytest.mark.parametrize("cache_dtype", ["uint8", "int8", "fp8"])
def test_sparse_decode_cache_dtypes_and_padded_blocks(fm, backend, rng, fmt, cache_dtype):
    """The FP8 cache as uint8, int8 or float8_e4m3fn (NumPy via ml_dtypes), with padding
    between blocks (stride(0) > B * bytes_per_token, as FlashMLA's test allocators)."""
    if cache_dtype == "fp8" and backend.name == "torch":
        pytest.skip("torch 1.13 has no float8 dtype")
    d = R.FORMATS[fmt][0]
    block = 8
    q = q_for(rng, 2, 2, 64, d)
    pool = make_sparse_pool(rng, 2, 2, 120, 64, block, fmt, with_length=(fmt == R.MODEL1))
    bpt = R.FORMATS[fmt][5]
    pad = 656 if fmt == R.V32 else (-(-584 * block // 576) * 576 - 584 * block)
    padded = padded_blocks(pool["cache"], pad)
    assert elem_strides(padded)[0] > block * bpt
    sink = make_sink(rng, 64)
    out, lse = sparse_decode(fm, backend, q, pool, d ** -0.55, sink, cache_dtype=cache_dtype,
                             cache=padded)
    check_sparse_decode(backend, out, lse, q, pool, d ** -0.55, sink)


@pytest.mark.parametrize("fmt", [R.V32, R.MODEL1])
def test_sparse_decode_empty_rows(fm, backend, rng, fmt):
    """All indices invalid (-1), topk_length 0, zero-length requests: out 0, lse +inf even with
    a sink (§3.1); other requests unaffected."""
    d = R.FORMATS[fmt][0]
    b, s_q, h_q, topk = 3, 2, 16, 64
    q = q_for(rng, b, s_q, h_q, d)
    pool = make_sparse_pool(rng, b, s_q, 100, topk, 64, fmt, zero_len=(2,))
    set_lengths(pool, [0, topk, topk])  # request 0: length 0 (garbage past it)
    pool["indices"][1, 0, :] = -1       # request 1, token 0: every entry invalid
    sink = make_sink(rng, h_q)
    out, lse = sparse_decode(fm, backend, q, pool, d ** -0.55, sink)
    out_np, lse_np = check_sparse_decode(backend, out, lse, q, pool, d ** -0.55, sink)
    for i, s in [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)]:
        assert np.all(out_np[i, s].astype(np.float32) == 0), (i, s)
        assert np.all(np.isposinf(lse_np[i, :, s])), (i, s)
    assert np.all(np.isfinite(lse_np[1, :, 1]))


def test_sparse_decode_duplicates_and_sink_extremes(fm, backend, rng):
    """Duplicated indices count each time; sink +inf -> out exactly 0, -inf -> no effect; the
    sink never changes lse."""
    fmt, d, h_q = R.MODEL1, 512, 8
    q = q_for(rng, 1, 1, h_q, d)
    pool = make_sparse_pool(rng, 1, 1, 80, 64, 16, fmt, varlen=False)
    idx = pool["indices"]
    valid = idx[idx != -1]
    a, c = int(valid[0]), int(valid[1])
    idx[0, 0, :] = -1
    idx[0, 0, :5] = [a, a, a, c, -1]
    sink = np.array([np.inf, -np.inf, 0.0, 1.0, -1.0, 3.0, np.inf, -np.inf], np.float32)
    out, lse = sparse_decode(fm, backend, q, pool, d ** -0.55, sink)
    out_np, lse_np = check_sparse_decode(backend, out, lse, q, pool, d ** -0.55, sink)
    # no-sink run gives the same lse; -inf sink heads equal the no-sink output
    out2, lse2 = sparse_decode(fm, backend, q, pool, d ** -0.55, None)
    assert np.array_equal(to_np(lse2), lse_np)
    o2 = to_np(out2)
    assert np.all(out_np[0, 0, [0, 6]].astype(np.float32) == 0)
    assert np.array_equal(out_np[0, 0, [1, 7]].view(np.uint16), o2[0, 0, [1, 7]].view(np.uint16))
    # duplicates: weight of token a is 3x that of c (lse = ln(3 e^sa + e^sc))
    kv = R.f64(pool["deq_flat"])
    sa = d ** -0.55 * R.f64(q[0, 0]) @ kv[a]
    sc = d ** -0.55 * R.f64(q[0, 0]) @ kv[c]
    np.testing.assert_allclose(lse_np[0, :, 0], np.log(3 * np.exp(sa) + np.exp(sc)), rtol=1e-5)


def test_sparse_decode_index_past_length_is_never_read(fm, backend, rng):
    """Entries past topk_length may hold anything (here INT_MAX-like values and a valid slot of
    a NaN token): results equal the reference that ignores them."""
    fmt, d = R.MODEL1, 512
    q = q_for(rng, 2, 1, 16, d)
    pool = make_sparse_pool(rng, 2, 1, 150, 128, 64, fmt, varlen=False)
    set_lengths(pool, [40, 70])
    nan_slot = int(np.argwhere(~pool["referenced"])[0, 0])
    for i, n in enumerate([40, 70]):
        pool["indices"][i, 0, n:] = INT_GARBAGE
        pool["indices"][i, 0, n] = nan_slot
        pool["indices"][i, 0, -1] = 2 ** 31 - 1
    out, lse = sparse_decode(fm, backend, q, pool, d ** -0.55)
    check_sparse_decode(backend, out, lse, q, pool, d ** -0.55)


@pytest.mark.parametrize("fmt", [R.V32, R.MODEL1])
def test_sparse_decode_default_scale(fm, backend, rng, fmt):
    """softmax_scale=None means q.shape[-1] ** -0.5 (576 for V32, 512 for MODEL1)."""
    d = R.FORMATS[fmt][0]
    q = q_for(rng, 2, 1, 16, d) * 4  # larger logits, so that the scale matters
    pool = make_sparse_pool(rng, 2, 1, 200, 64, 16, fmt)
    out, lse = sparse_decode(fm, backend, q, pool, None)
    check_sparse_decode(backend, out, lse, q, pool, d ** -0.5)


@pytest.mark.parametrize("fmt", [R.V32, R.MODEL1])
def test_sparse_decode_sharp_softmax(fm, backend, rng, threads, fmt):
    """Large logits (softmax_scale 3) with split requests: a peaked softmax."""
    threads(32)
    d = R.FORMATS[fmt][0]
    q = q_for(rng, 2, 2, 64, d)
    pool = make_sparse_pool(rng, 2, 2, 300, 128, 16, fmt, with_length=True)
    extra = make_sparse_pool(rng, 2, 2, 100, 64, 8, fmt, with_length=True)
    sink = make_sink(rng, 64)
    out, lse = sparse_decode(fm, backend, q, pool, 3.0, sink, extra)
    check_sparse_decode(backend, out, lse, q, pool, 3.0, sink, extra)


# ------------------------------------------------------------------------------------------
# Sparse prefill

INVALID = [-2 ** 31, -123456, -1, None, 114514, 1919810, 2147480000, 2 ** 31 - 1]  # None: s_kv


def make_prefill_case(rng, s_q, h_q, d, s_kv, topk, with_len, all_invalid_rows=()):
    """§6.4: q = randn/10 + u, kv = randn/10 + u' (u, u' uniform in +-0.05), clamped +-10;
    indices: topk distinct positions (surplus over s_kv from the invalid set), shuffled."""
    u, u2 = rng.uniform(-0.05, 0.05, 2)
    q = np.clip(rng.standard_normal((s_q, h_q, d)) / 10 + u, -10, 10).astype(np.float32)
    kv = np.clip(rng.standard_normal((s_kv, 1, d)) / 10 + u2, -10, 10).astype(np.float32)
    invalid = [s_kv if v is None else v for v in INVALID]
    idx = np.empty((s_q, 1, topk), dtype=np.int64)
    for s in range(s_q):
        n = min(topk, s_kv)
        row = np.concatenate([rng.choice(s_kv, n, replace=False),
                              rng.choice(invalid, topk - n)])
        idx[s, 0] = rng.permutation(row)
    for s in all_invalid_rows:
        idx[s, 0, :] = invalid[s % len(invalid)]
    topk_length = (np.minimum(rng.integers(0, max(topk + 1, 64), s_q), topk).astype(np.int32)
                   if with_len else None)
    return q.astype(BF16), kv.astype(BF16), idx.astype(np.int32), topk_length


# s_q, h_q, d, s_kv, topk, sink, with_len, all_invalid_rows
PREFILL_CASES = [
    (8, 64, 576, 128, 128, False, False, ()),
    (12, 128, 512, 300, 128, True, True, (3,)),
    (6, 64, 512, 95, 128, True, False, ()),      # topk > s_kv: invalid markers of every kind
    (10, 16, 576, 200, 64, False, True, (0, 9)),
    (5, 64, 576, 153, 256, True, True, ()),
]


@pytest.mark.parametrize("s_q,h_q,d,s_kv,topk,with_sink,with_len,all_invalid", PREFILL_CASES)
def test_sparse_prefill(fm, backend, rng, s_q, h_q, d, s_kv, topk, with_sink, with_len,
                        all_invalid):
    q, kv, idx, tl = make_prefill_case(rng, s_q, h_q, d, s_kv, topk, with_len, all_invalid)
    sink = make_sink(rng, h_q) if with_sink else None
    A = backend.arr
    res = fm.flash_mla_sparse_fwd(A(noncontig(q)), A(noncontig(kv)), A(noncontig(idx)), 0.5,
                                  attn_sink=None if sink is None else A(sink),
                                  topk_length=None if tl is None else A(tl))
    assert isinstance(res, (tuple, list)) and len(res) == 3
    out, max_logits, lse = res
    for x in res:
        assert backend.native(x)
    out_np, ml_np, lse_np = to_np(out), to_np(max_logits), to_np(lse)
    assert out_np.dtype == BF16 and ml_np.dtype == np.float32 and lse_np.dtype == np.float32
    assert out_np.shape == (s_q, h_q, DV)
    assert ml_np.shape == (s_q, h_q) and lse_np.shape == (s_q, h_q)
    assert elem_strides(out) == (h_q * DV, DV, 1)
    assert elem_strides(max_logits) == (h_q, 1) and elem_strides(lse) == (h_q, 1)
    ref_out, ref_ml, ref_lse = R.ref_sparse_prefill(q, kv, idx, 0.5, sink, tl)
    R.check("out", out_np.astype(np.float32), ref_out.astype(np.float32), R.TOL_PREFILL_OUT)
    R.check("max_logits", ml_np, ref_ml.astype(np.float32), R.TOL_PREFILL_LSE)
    R.check("lse", lse_np, ref_lse.astype(np.float32), R.TOL_PREFILL_LSE)
    for s in all_invalid:
        assert np.all(out_np[s].astype(np.float32) == 0)
        assert np.all(np.isneginf(ml_np[s])) and np.all(np.isposinf(lse_np[s]))


def test_sparse_prefill_nan_tokens_and_duplicates(fm, backend, rng):
    """Tokens that no valid in-length entry references may be NaN (also the target of a valid
    index past topk_length: conventions §6 'never read'); duplicates count each time."""
    s_q, h_q, d, s_kv, topk = 4, 16, 512, 64, 64
    q, kv, idx, _ = make_prefill_case(rng, s_q, h_q, d, s_kv, topk, False)
    tl = np.array([10, 64, 0, 33], dtype=np.int32)
    idx[1, 0, :4] = idx[1, 0, 4]  # duplicates in token 1
    used = set()
    for s in range(s_q):
        row = idx[s, 0, :tl[s]]
        used.update(int(t) for t in row if 0 <= t < s_kv)
    unused = [t for t in range(s_kv) if t not in used]
    assert unused
    kv_nan = kv.copy()
    kv_nan[unused] = np.nan
    idx[0, 0, 10] = unused[0]  # past the length, valid index, NaN token
    A = backend.arr
    out, ml, lse = fm.flash_mla_sparse_fwd(A(q), A(kv_nan), A(idx), 0.5, topk_length=A(tl))
    ref_out, ref_ml, ref_lse = R.ref_sparse_prefill(q, kv, idx, 0.5, None, tl)
    R.check("out", to_np(out).astype(np.float32), ref_out.astype(np.float32), R.TOL_PREFILL_OUT)
    R.check("max_logits", to_np(ml), ref_ml.astype(np.float32), R.TOL_PREFILL_LSE)
    R.check("lse", to_np(lse), ref_lse.astype(np.float32), R.TOL_PREFILL_LSE)
    assert np.all(to_np(out)[2].astype(np.float32) == 0) and np.all(np.isposinf(to_np(lse)[2]))


def test_sparse_prefill_sharp_softmax(fm, backend, rng):
    """Large logits (q = randn / 2, sm_scale 4): a peaked softmax."""
    q, kv, idx, tl = make_prefill_case(rng, 6, 64, 576, 200, 128, True, (2,))
    q = (rng.standard_normal(q.shape) / 2).astype(np.float32).astype(BF16)
    sink = make_sink(rng, 64)
    A = backend.arr
    out, ml, lse = fm.flash_mla_sparse_fwd(A(q), A(kv), A(idx), 4.0, attn_sink=A(sink),
                                           topk_length=A(tl))
    ref_out, ref_ml, ref_lse = R.ref_sparse_prefill(q, kv, idx, 4.0, sink, tl)
    R.check("out", to_np(out).astype(np.float32), ref_out.astype(np.float32), R.TOL_PREFILL_OUT)
    R.check("max_logits", to_np(ml), ref_ml.astype(np.float32), R.TOL_PREFILL_LSE)
    R.check("lse", to_np(lse), ref_lse.astype(np.float32), R.TOL_PREFILL_LSE)
