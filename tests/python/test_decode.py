"""Dense MLA decode: flash_mla_with_kvcache without indices (reference §2.3, §3.2, §6.2;
conventions §2.1, §3, §9), checked against numpy_ref.ref_dense_decode on FlashMLA's test data
(random block-table permutation, NaN in every unused cache slot, 2147480000 in unused table
entries) at small sizes, through both call paths (NumPy and torch)."""
import numpy as np
import pytest

import numpy_ref as R
from helpers import (BF16, INT_GARBAGE, elem_strides, make_dense_case, noncontig, to_np)

D, DV = 576, 512


def decode(fm, backend, q, k, bt, sl, causal=False, scale=None, sched=None, **kw):
    if sched is None:
        sched, _ = fm.get_mla_metadata()
    return fm.flash_mla_with_kvcache(backend.arr(q), backend.arr(k), backend.arr(bt),
                                     backend.arr(sl), DV, sched, None, softmax_scale=scale,
                                     causal=causal, **kw)


def check_dense_result(backend, out, lse, q, k, bt, sl, causal, scale=None):
    b, s_q, h_q, _ = q.shape
    assert backend.native(out) and backend.native(lse)
    out_np, lse_np = to_np(out), to_np(lse)
    assert out_np.dtype == q.dtype, (out_np.dtype, q.dtype)
    assert lse_np.dtype == np.float32
    assert out_np.shape == (b, s_q, h_q, DV)
    assert lse_np.shape == (b, h_q, s_q)
    # dense lse: contiguous (b, h_q, s_q); out contiguous
    assert elem_strides(lse) == (h_q * s_q, s_q, 1)
    assert elem_strides(out) == (s_q * h_q * DV, h_q * DV, DV, 1)
    ref_out, ref_lse = R.ref_dense_decode(q, k, bt, sl, DV, causal, scale)
    R.check("out", out_np, ref_out.astype(q.dtype), R.TOL_DENSE_OUT)
    R.check("lse", lse_np, ref_lse.astype(np.float32), R.TOL_DENSE_LSE)
    # empty rows (zero-length requests, empty causal windows): exact zeros and +inf
    empty = np.isinf(ref_lse)  # (b, h_q, s_q)
    if empty.any():
        e = np.transpose(empty, (0, 2, 1))
        assert np.all(out_np.astype(np.float32)[e] == 0.0)
        assert np.all(np.isposinf(lse_np[empty]))
    assert not np.isnan(out_np.astype(np.float32)).any()
    return out_np, lse_np


# b, s_q, h_q, h_kv, s_k, varlen, causal, zero_len
CASES = [
    (2, 1, 128, 1, 150, True, False, ()),
    (3, 2, 128, 1, 120, True, True, (1,)),
    (2, 2, 16, 1, 250, False, True, ()),
    (3, 1, 16, 1, 300, True, False, (0,)),
    (3, 2, 16, 1, 100, True, False, ()),
    (2, 2, 6, 2, 130, True, True, ()),      # GQA: 3 query heads per KV head
    (2, 1, 9, 3, 90, True, False, ()),
]


@pytest.mark.parametrize("parts", [0, 16])
@pytest.mark.parametrize("b,s_q,h_q,h_kv,s_k,varlen,causal,zero_len", CASES)
def test_dense_decode(fm, backend, rng, threads, b, s_q, h_q, h_kv, s_k, varlen, causal, zero_len,
                      parts):
    """parts 0: the default thread count; 16: sixteen scheduler parts, so requests are split and
    the combine runs."""
    threads(parts)
    q, k, bt, sl = make_dense_case(rng, b, s_q, h_q, h_kv, s_k, varlen, zero_len)
    saved = [x.copy() for x in (q, k, bt, sl)]
    out, lse = decode(fm, backend, q, k, bt, sl, causal)
    check_dense_result(backend, out, lse, q, k, bt, sl, causal)
    for before, after in zip(saved, (q, k, bt, sl)):  # inputs are not written
        assert before.tobytes() == after.tobytes()


def test_dense_decode_default_scale_is_inv_sqrt_576(fm, rng):
    """softmax_scale=None means 576 ** -0.5; an explicit scale is honoured."""
    q, k, bt, sl = make_dense_case(rng, 2, 1, 16, 1, 100)
    be = __import__("helpers").BACKENDS["numpy"]
    out_default, lse_default = decode(fm, be, q, k, bt, sl)
    out_explicit, lse_explicit = decode(fm, be, q, k, bt, sl, scale=576 ** -0.5)
    assert np.array_equal(to_np(lse_default), to_np(lse_explicit))
    out_other, lse_other = decode(fm, be, q, k, bt, sl, scale=0.11)
    check_dense_result(be, out_other, lse_other, q, k, bt, sl, False, 0.11)
    assert not np.allclose(to_np(lse_other), to_np(lse_default))


def test_dense_decode_causal_empty_window(fm, backend, rng):
    """Causal, s_q=2, a request of length 1: its first query token sees nothing (out 0, lse
    +inf); the second sees token 0 only (out = V of token 0, lse = its logit)."""
    q, k, bt, sl = make_dense_case(rng, 2, 2, 16, 1, 70, varlen=False)
    sl = np.array([1, 70], dtype=np.int32)
    # re-poison: request 0 now has one token
    blk0 = bt[0, 0]
    k[blk0, 1:] = np.nan
    bt[0, 1:] = INT_GARBAGE
    out, lse = decode(fm, backend, q, k, bt, sl, causal=True)
    out_np, lse_np = check_dense_result(backend, out, lse, q, k, bt, sl, True)
    assert np.all(out_np[0, 0].astype(np.float32) == 0) and np.all(np.isposinf(lse_np[0, :, 0]))
    v0 = k[blk0, 0, 0, :DV]
    assert np.array_equal(out_np[0, 1], np.broadcast_to(v0, (16, DV)))
    logit = R.f64(q[0, 1, :, :]) @ R.f64(k[blk0, 0, 0]) * 576 ** -0.5
    np.testing.assert_allclose(lse_np[0, :, 1], logit, rtol=1e-5, atol=1e-6)


def test_dense_decode_all_zero_lengths(fm, backend, rng):
    q, k, bt, sl = make_dense_case(rng, 2, 2, 16, 1, 64, zero_len=(0, 1))
    out, lse = decode(fm, backend, q, k, bt, sl, causal=True)
    assert np.all(to_np(out).astype(np.float32) == 0)
    assert np.all(np.isposinf(to_np(lse)))


def test_dense_decode_fp16(fm, backend, rng):
    q, k, bt, sl = make_dense_case(rng, 2, 2, 16, 1, 150, dtype=np.float16)
    out, lse = decode(fm, backend, q, k, bt, sl, causal=True)
    assert backend.dtype_of(out) == "fp16"
    check_dense_result(backend, out, lse, q, k, bt, sl, True)


def test_dense_decode_noncontiguous_inputs(fm, backend, rng):
    """q, block_table and cache need only a contiguous last dim (conventions §2.1)."""
    q, k, bt, sl = make_dense_case(rng, 2, 2, 16, 1, 140)
    qn, kn, btn = noncontig(q), noncontig(k, pad_last=64), noncontig(bt, pad_last=3)
    assert not qn.flags.c_contiguous and not kn.flags.c_contiguous
    out, lse = decode(fm, backend, qn, kn, btn, sl, causal=True)
    check_dense_result(backend, out, lse, q, k, bt, sl, True)


@pytest.mark.parametrize("block", [16, 37])
def test_dense_decode_other_page_sizes(fm, backend, rng, block):
    """Any page_block_size >= 1 (conventions §3 rule 4; FlashMLA: 64 only)."""
    q, k, bt, sl = make_dense_case(rng, 2, 2, 16, 1, 150, block=block)
    out, lse = decode(fm, backend, q, k, bt, sl, causal=True)
    check_dense_result(backend, out, lse, q, k, bt, sl, True)


@pytest.mark.parametrize("cache_dtype", ["uint8", "int8", "fp8"])
def test_dense_decode_fp8_v32_cache(fm, backend, rng, cache_dtype):
    """Dense decode over an FP8 V32 cache (conventions §9): equals the reference over the
    dequantized cache; NaN in unused slots does not leak."""
    if cache_dtype == "fp8" and backend.name == "torch":
        pytest.skip("torch 1.13 has no float8 dtype")
    q, k, bt, sl = make_dense_case(rng, 2, 2, 16, 1, 140)
    unused = np.isnan(k[:, :, 0, 0].astype(np.float32))
    clean = np.where(np.isnan(k.astype(np.float32)), 0, k.astype(np.float32)).astype(BF16)
    cache = R.quantize_kv(clean, R.V32)
    deq = R.dequantize_kv(cache, R.V32)
    R.poison_tokens(cache, R.V32, unused)
    if cache_dtype == "fp8":
        cache_in = cache.view(R.FP8)
        kin = backend.arr(cache_in)
    else:
        kin = backend.arr(cache.view(np.int8) if cache_dtype == "int8" else cache,
                          "int8" if cache_dtype == "int8" else None)
    sched, _ = fm.get_mla_metadata()
    out, lse = fm.flash_mla_with_kvcache(backend.arr(q), kin, backend.arr(bt), backend.arr(sl),
                                         DV, sched, None, causal=True, is_fp8_kvcache=True)
    check_dense_result(backend, out, lse, q, deq, bt, sl, True)


def test_dense_decode_repeatable(fm, rng):
    """Same inputs, same schedule: bitwise identical results."""
    be = __import__("helpers").BACKENDS["numpy"]
    q, k, bt, sl = make_dense_case(rng, 3, 2, 16, 1, 400)
    sched, _ = fm.get_mla_metadata()
    o1, l1 = decode(fm, be, q, k, bt, sl, True, sched=sched)
    o2, l2 = decode(fm, be, q, k, bt, sl, True, sched=sched)
    assert np.array_equal(o1.view(np.uint16), o2.view(np.uint16))
    assert np.array_equal(l1, l2)


@pytest.mark.parametrize("parts", [0, 16])
def test_dense_decode_sharp_softmax(fm, backend, rng, threads, parts):
    """Large logits (q = randn, softmax_scale 2): a peaked softmax, where errors in the scale,
    the max tracking or the split combine show up clearly (FlashMLA's randn/10 data gives an
    almost uniform softmax)."""
    threads(parts)
    q, k, bt, sl = make_dense_case(rng, 3, 2, 16, 1, 250, zero_len=(1,))
    q = (np.clip(rng.standard_normal(q.shape), -4, 4)).astype(np.float32).astype(q.dtype)
    out, lse = decode(fm, backend, q, k, bt, sl, causal=True, scale=2.0)
    check_dense_result(backend, out, lse, q, k, bt, sl, True, 2.0)
