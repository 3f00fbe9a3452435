"""Errors (reference §2.2, §2.3, §2.5; conventions §4): wrong arguments raise ValueError (value,
shape, stride, length) or TypeError (dtype) carrying the C++ message that names the argument
("<function>: argument '<name>': expected ..., got ..."); FlashMLA's Python-level checks raise
AssertionError (num_splits with a FlashMLASchedMeta, dropout_p != 0, inconsistent sched reuse,
sparse-only arguments on the dense path, causal sparse attention)."""
import numpy as np
import pytest

import numpy_ref as R
from helpers import cu_from_lens, make_dense_case, make_sparse_pool, randn_bf16
from test_sparse import make_prefill_case, q_for


def raises_naming(exc, arg):
    """The C++ message format: "<function>: argument '<arg>': expected ..., got ..."."""
    return pytest.raises(exc, match=rf"\w+: argument '{arg}': expected .*got ")


@pytest.fixture
def dense(rng):
    return make_dense_case(rng, 2, 1, 16, 1, 100, varlen=False)


def call_dense(fm, backend, q, k, bt, sl, head_dim_v=512, **kw):
    sched, _ = fm.get_mla_metadata()
    A = backend.arr
    return fm.flash_mla_with_kvcache(A(q), A(k), A(bt), A(sl), head_dim_v, sched, None, **kw)


# ------------------------------------------------------------------------------------------
# dense decode


def test_dense_q_wrong_dtype(fm, backend, dense):
    q, k, bt, sl = dense
    with raises_naming(TypeError, "q") as e:
        call_dense(fm, backend, q.astype(np.float32), k, bt, sl)
    assert "flash_mla_with_kvcache" in str(e.value)


def test_dense_cache_dtype_differs(fm, backend, dense):
    q, k, bt, sl = dense
    with raises_naming(TypeError, "k_cache"):
        call_dense(fm, backend, q, k.astype(np.float16), bt, sl)


def test_dense_block_table_int64(fm, backend, dense):
    q, k, bt, sl = dense
    with raises_naming(TypeError, "block_table"):
        call_dense(fm, backend, q, k, bt.astype(np.int64), sl)


def test_dense_cache_seqlens_float(fm, backend, dense):
    q, k, bt, sl = dense
    with raises_naming(TypeError, "cache_seqlens"):
        call_dense(fm, backend, q, k, bt, sl.astype(np.float32))


def test_dense_cache_seqlens_wrong_shape(fm, backend, dense):
    q, k, bt, sl = dense
    with raises_naming(ValueError, "cache_seqlens"):
        call_dense(fm, backend, q, k, bt, np.concatenate([sl, sl]))


def test_dense_cache_seqlens_too_long(fm, backend, dense):
    q, k, bt, sl = dense
    bad = sl.copy()
    bad[1] = bt.shape[1] * 64 + 1
    with raises_naming(ValueError, "cache_seqlens"):
        call_dense(fm, backend, q, k, bt, bad)


def test_dense_head_dim_v(fm, backend, dense):
    q, k, bt, sl = dense
    with raises_naming(ValueError, "head_dim_v"):
        call_dense(fm, backend, q, k, bt, sl, head_dim_v=256)


def test_dense_q_last_dim_not_contiguous(fm, backend, dense):
    q, k, bt, sl = dense
    big = np.zeros(q.shape[:-1] + (2 * q.shape[-1],), dtype=q.dtype)
    qs = big[..., ::2]
    qs[...] = q
    with raises_naming(ValueError, "q"):
        call_dense(fm, backend, qs, k, bt, sl)


def test_dense_heads_not_divisible(fm, backend, rng):
    q, k, bt, sl = make_dense_case(rng, 2, 1, 3, 2, 100, varlen=False)
    with pytest.raises(ValueError, match=r"argument '(q|k_cache)': expected .*got "):
        call_dense(fm, backend, q, k, bt, sl)


def test_dense_cache_dim_mismatch(fm, backend, dense):
    q, k, bt, sl = dense
    with raises_naming(ValueError, "k_cache"):
        call_dense(fm, backend, q, np.ascontiguousarray(k[..., :512]), bt, sl)


def test_dense_bad_softmax_scale(fm, backend, dense):
    q, k, bt, sl = dense
    with raises_naming(ValueError, "softmax_scale"):
        call_dense(fm, backend, q, k, bt, sl, softmax_scale=float("inf"))


def test_dense_not_an_array(fm, dense):
    q, k, bt, sl = dense
    sched, _ = fm.get_mla_metadata()
    with raises_naming(TypeError, "block_table"):
        fm.flash_mla_with_kvcache(q, k, "table", sl, 512, sched, None)


# ------------------------------------------------------------------------------------------
# FlashMLA's Python-level asserts


def test_num_splits_with_sched_meta_asserts(fm, backend, dense):
    q, k, bt, sl = dense
    sched, _ = fm.get_mla_metadata()
    A = backend.arr
    with pytest.raises(AssertionError):
        fm.flash_mla_with_kvcache(A(q), A(k), A(bt), A(sl), 512, sched,
                                  A(np.zeros(3, np.int32)))


def test_dense_with_sparse_only_argument_asserts(fm, backend, dense):
    q, k, bt, sl = dense
    with pytest.raises(AssertionError):
        call_dense(fm, backend, q, k, bt, sl, attn_sink=backend.arr(np.zeros(16, np.float32)))
    with pytest.raises(AssertionError):
        call_dense(fm, backend, q, k, bt, sl, topk_length=backend.arr(np.zeros(2, np.int32)))


def test_dense_without_block_table_asserts(fm, dense):
    q, k, bt, sl = dense
    sched, _ = fm.get_mla_metadata()
    with pytest.raises(AssertionError):
        fm.flash_mla_with_kvcache(q, k, None, sl, 512, sched, None)


def test_sched_reuse_inconsistent_asserts(fm, backend, rng, dense):
    q, k, bt, sl = dense
    sched, _ = fm.get_mla_metadata()
    A = backend.arr
    fm.flash_mla_with_kvcache(A(q), A(k), A(bt), A(sl), 512, sched, None)
    q2 = np.concatenate([q, q], axis=2)  # h_q 16 -> 32
    with pytest.raises(AssertionError, match="inconsistent"):
        fm.flash_mla_with_kvcache(A(q2), A(k), A(bt), A(sl), 512, sched, None)
    with pytest.raises(AssertionError, match="inconsistent"):
        fm.flash_mla_with_kvcache(A(q), A(k), A(bt), A(sl), 512, sched, None, causal=True)


def sparse_args(rng, fmt=R.MODEL1, h_q=16, topk=64):
    d = R.FORMATS[fmt][0]
    q = q_for(rng, 2, 1, h_q, d)
    pool = make_sparse_pool(rng, 2, 1, 100, topk, 16, fmt)
    return q, pool


def call_sparse(fm, backend, q, pool, sched=None, **kw):
    if sched is None:
        sched, _ = fm.get_mla_metadata()
    A = backend.arr
    kw.setdefault("is_fp8_kvcache", True)
    return fm.flash_mla_with_kvcache(A(q), A(pool["cache"]), None, None, 512, sched, None,
                                     indices=A(pool["indices"]), **kw)


def test_sparse_causal_asserts(fm, backend, rng):
    q, pool = sparse_args(rng)
    with pytest.raises(AssertionError):
        call_sparse(fm, backend, q, pool, causal=True)


def test_mha_dropout_asserts(fm, backend, rng):
    q = randn_bf16(rng, (10, 2, 128))
    cu = cu_from_lens([10])
    A = backend.arr
    with pytest.raises(AssertionError):
        fm.flash_attn_varlen_func(A(q), A(q), A(q), A(cu), A(cu), 10, 10, dropout_p=0.1)
    qkv = randn_bf16(rng, (10, 2, 384))
    with pytest.raises(AssertionError):
        fm.flash_attn_varlen_qkvpacked_func(A(qkv), A(cu), 10, 128, dropout_p=0.5)
    kv = randn_bf16(rng, (10, 2, 256))
    with pytest.raises(AssertionError):
        fm.flash_attn_varlen_kvpacked_func(A(q), A(kv), A(cu), A(cu), 10, 10, 128,
                                           dropout_p=0.2)


# ------------------------------------------------------------------------------------------
# sparse decode


def test_sparse_indices_int64(fm, backend, rng):
    q, pool = sparse_args(rng)
    pool["indices"] = pool["indices"].astype(np.int64)
    with raises_naming(TypeError, "indices"):
        call_sparse(fm, backend, q, pool)


def test_sparse_index_out_of_range(fm, backend, rng):
    q, pool = sparse_args(rng)
    nslots = pool["cache"].shape[0] * pool["cache"].shape[1]
    pool["indices"][1, 0, 3] = nslots
    with raises_naming(ValueError, "indices"):
        call_sparse(fm, backend, q, pool)
    pool["indices"][1, 0, 3] = -2
    with raises_naming(ValueError, "indices"):
        call_sparse(fm, backend, q, pool)


def test_sparse_topk_length_too_large(fm, backend, rng):
    q, pool = sparse_args(rng)
    with raises_naming(ValueError, "topk_length"):
        call_sparse(fm, backend, q, pool,
                    topk_length=backend.arr(np.array([3, 65], dtype=np.int32)))


def test_sparse_attn_sink_wrong_shape_and_dtype(fm, backend, rng):
    q, pool = sparse_args(rng)
    with raises_naming(ValueError, "attn_sink"):
        call_sparse(fm, backend, q, pool, attn_sink=backend.arr(np.zeros(17, np.float32)))
    with raises_naming(TypeError, "attn_sink"):
        call_sparse(fm, backend, q, pool, attn_sink=backend.arr(np.zeros(16, np.int32)))


def test_sparse_cache_wrong_bytes_per_token(fm, backend, rng):
    q, pool = sparse_args(rng)
    pool["cache"] = np.ascontiguousarray(pool["cache"][..., :580])
    with raises_naming(ValueError, "k_cache"):
        call_sparse(fm, backend, q, pool)


def test_sparse_extra_indices_without_cache(fm, backend, rng):
    q, pool = sparse_args(rng)
    with pytest.raises((ValueError, AssertionError)):
        call_sparse(fm, backend, q, pool,
                    extra_indices_in_kvcache=backend.arr(pool["indices"]))


# ------------------------------------------------------------------------------------------
# sparse prefill


@pytest.fixture
def prefill(rng):
    return make_prefill_case(rng, 4, 16, 512, 100, 64, False)


def call_prefill(fm, backend, q, kv, idx, sm_scale=0.5, **kw):
    A = backend.arr
    return fm.flash_mla_sparse_fwd(A(q), A(kv), A(idx), sm_scale, **kw)


def test_prefill_q_dtype(fm, backend, prefill):
    q, kv, idx, _ = prefill
    with raises_naming(TypeError, "q") as e:
        call_prefill(fm, backend, q.astype(np.float16), kv, idx)
    assert "flash_mla_sparse_fwd" in str(e.value)


def test_prefill_kv_heads(fm, backend, prefill):
    q, kv, idx, _ = prefill
    with raises_naming(ValueError, "kv"):
        call_prefill(fm, backend, q, np.concatenate([kv, kv], axis=1), idx)


def test_prefill_d_v(fm, backend, prefill):
    q, kv, idx, _ = prefill
    with raises_naming(ValueError, "d_v"):
        call_prefill(fm, backend, q, kv, idx, d_v=256)


def test_prefill_sm_scale(fm, backend, prefill):
    q, kv, idx, _ = prefill
    with raises_naming(ValueError, "sm_scale"):
        call_prefill(fm, backend, q, kv, idx, sm_scale=float("nan"))


def test_prefill_indices_dtype_and_shape(fm, backend, prefill):
    q, kv, idx, _ = prefill
    with raises_naming(TypeError, "indices"):
        call_prefill(fm, backend, q, kv, idx.astype(np.int64))
    with raises_naming(ValueError, "indices"):
        call_prefill(fm, backend, q, kv, np.ascontiguousarray(idx[:3]))


def test_prefill_topk_length_shape(fm, backend, prefill):
    q, kv, idx, _ = prefill
    with raises_naming(ValueError, "topk_length"):
        call_prefill(fm, backend, q, kv, idx,
                     topk_length=backend.arr(np.zeros(5, np.int32)))


# ------------------------------------------------------------------------------------------
# MHA


@pytest.fixture
def mha(rng):
    lens = [10, 7]
    q = randn_bf16(rng, (17, 4, 128))
    k = randn_bf16(rng, (17, 2, 128))
    v = randn_bf16(rng, (17, 2, 128))
    return q, k, v, cu_from_lens(lens)


def call_mha(fm, backend, q, k, v, cu_q, cu_k, mq=10, mk=10, **kw):
    A = backend.arr
    return fm.flash_attn_varlen_func(A(q), A(k), A(v), A(cu_q), A(cu_k), mq, mk, **kw)


def test_mha_cu_seqlens_not_from_zero(fm, backend, mha):
    q, k, v, cu = mha
    bad = cu.copy()
    bad[0] = 1
    with raises_naming(ValueError, "cu_seqlens_qo"):
        call_mha(fm, backend, q, k, v, bad, cu)


def test_mha_cu_seqlens_kv_wrong_total(fm, backend, mha):
    q, k, v, cu = mha
    bad = cu.copy()
    bad[-1] = 16
    with raises_naming(ValueError, "cu_seqlens_kv"):
        call_mha(fm, backend, q, k, v, cu, bad)


def test_mha_k_dtype(fm, backend, mha):
    q, k, v, cu = mha
    with raises_naming(TypeError, "k"):
        call_mha(fm, backend, q, k.astype(np.float32), v, cu, cu)


def test_mha_max_seqlen_too_small(fm, backend, mha):
    q, k, v, cu = mha
    with raises_naming(ValueError, "max_seqlen_qo"):
        call_mha(fm, backend, q, k, v, cu, cu, mq=9)


def test_mha_head_dims(fm, backend, rng, mha):
    """Conventions §10: d_qk, d_v multiples of 8 in [8, 256]; others name q / v."""
    q, k, v, cu = mha
    with raises_naming(ValueError, "q"):
        call_mha(fm, backend, np.ascontiguousarray(q[..., :100]),
                 np.ascontiguousarray(k[..., :100]), v, cu, cu)
    with raises_naming(ValueError, "v"):
        call_mha(fm, backend, q, k, randn_bf16(rng, (17, 2, 264)), cu, cu)


def test_mha_heads_not_divisible(fm, backend, rng, mha):
    q, k, v, cu = mha
    k3 = randn_bf16(rng, (17, 3, 128))
    v3 = randn_bf16(rng, (17, 3, 128))
    with pytest.raises(ValueError, match=r"argument '(q|k)': expected .*got "):
        call_mha(fm, backend, q, k3, v3, cu, cu)


def test_mha_backward_bad_dout(fm, rng, mha):
    q, k, v, cu = mha
    out, lse = fm.flash_attn_varlen_func(q, k, v, cu, cu, 10, 10)
    with raises_naming(ValueError, "dout"):
        fm.flash_attn_varlen_backward(np.ascontiguousarray(out[:16]), q, k, v, out, lse, cu, cu,
                                      10, 10)
    with raises_naming(TypeError, "dout"):
        fm.flash_attn_varlen_backward(out.astype(np.float32), q, k, v, out, lse, cu, cu, 10, 10)


# ------------------------------------------------------------------------------------------
# FP8 cache helpers


def test_quantize_bad_arguments(fm, rng):
    k = randn_bf16(rng, (2, 4, 1, 576))
    with pytest.raises(ValueError):
        fm.quantize_kv_cache(np.ascontiguousarray(k[..., :500]))
    with pytest.raises(ValueError, match="kv_format"):
        fm.quantize_kv_cache(k, kv_format="fp4")
    with pytest.raises(ValueError):
        fm.quantize_kv_cache(k, kv_format="MODEL1")  # d_qk 576 is not MODEL1's 512
    with pytest.raises(TypeError):
        fm.quantize_kv_cache(k.astype(np.float32))


def test_dequantize_bad_arguments(fm):
    with pytest.raises(ValueError):
        fm.dequantize_kv_cache(np.zeros((2, 4, 1, 600), np.uint8))
    with pytest.raises(TypeError):
        fm.dequantize_kv_cache(np.zeros((2, 4, 1, 656), np.float32))


def test_token_slots_bad_arguments(fm):
    bt = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match="positions"):
        fm.token_slots(bt, np.full((2, 4), 3 * 64, np.int32), 64)  # past the block table
    with pytest.raises(ValueError, match="page_block_size"):
        fm.token_slots(bt, np.zeros((2, 4), np.int32), 0)
