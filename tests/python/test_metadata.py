"""Scheduler metadata, both call generations (reference §2.1, §2.2, §2.7, §5; conventions §4,
§5):

* new: ``sched, _ = get_mla_metadata()`` -> an empty FlashMLASchedMeta filled by the first
  flash_mla_with_kvcache call (Config recorded, schedule stored) and reused over layers;
  AssertionError when a reused sched meets an inconsistent shape;
* legacy: ``tile_md, num_splits = get_mla_metadata(cache_seqlens, s_q*h_q//h_kv, h_kv)`` -> two
  int32 arrays accepted by flash_mla_with_kvcache(..., tile_md, num_splits, causal=...).

Schedules are compared record for record with numpy_ref.ref_schedule (the §5.3 greedy walk, for
the number of parts the arrays have) and checked for the §5.2 invariants."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numpy_ref as R
from helpers import BF16, BACKENDS, make_dense_case, make_sink, make_sparse_pool, to_np
from test_decode import check_dense_result, decode
from test_sparse import check_sparse_decode, q_for, sparse_decode


def check_schedule(backend, tile_md, num_splits, n_tok):
    assert backend.native(tile_md) and backend.native(num_splits)
    md, ns = to_np(tile_md), to_np(num_splits)
    assert md.dtype == np.int32 and ns.dtype == np.int32
    assert md.ndim == 2 and md.shape[1] == 8 and md.shape[0] >= 1
    assert md.flags.c_contiguous
    assert ns.shape == (len(n_tok) + 1,)
    R.schedule_coverage(md, ns, n_tok)
    ref_md, ref_ns = R.ref_schedule(n_tok, md.shape[0])
    assert np.array_equal(ns, ref_ns), (ns.tolist(), ref_ns.tolist())
    # every field except the padding int
    assert np.array_equal(md[:, :7], ref_md[:, :7]), (md.tolist(), ref_md.tolist())
    return md, ns


def test_get_mla_metadata_new_api(fm):
    from flash_mla.flash_mla_interface import FlashMLASchedMeta
    res = fm.get_mla_metadata()
    assert isinstance(res, tuple) and len(res) == 2
    sched, none = res
    assert none is None
    assert isinstance(sched, FlashMLASchedMeta)
    assert sched.have_initialized is False and sched.config is None
    assert sched.tile_scheduler_metadata is None and sched.num_splits is None
    fields = [f for f in FlashMLASchedMeta.Config.__dataclass_fields__]
    assert fields == ["b", "s_q", "h_q", "page_block_size", "h_k", "causal", "is_fp8_kvcache",
                      "topk", "extra_page_block_size", "extra_topk"]
    # fresh object every call
    assert fm.get_mla_metadata()[0] is not sched


@pytest.mark.parametrize("parts", [0, 6])
def test_sched_filled_and_reused_over_layers(fm, backend, rng, threads, parts):
    threads(parts)
    """Three "layers" (own q and cache, shared block table and lengths) on one sched."""
    b, s_q, h_q, h_kv = 3, 2, 16, 1
    sl = np.array([150, 0, 700], dtype=np.int32)
    per = 12
    bt = rng.permutation(b * per).reshape(b, per).astype(np.int32)
    ks, qs = [], []
    for _ in range(3):
        k = (np.clip(rng.standard_normal((b * per, 64, h_kv, 576)) / 10, -1, 1)
             .astype(np.float32))
        for i in range(b):
            L = int(sl[i])
            used = -(-L // 64)
            for j in range(per):
                if j >= used:
                    k[bt[i, j]] = np.nan
                elif j == used - 1 and L % 64:
                    k[bt[i, j], L % 64:] = np.nan
        ks.append(k.astype(BF16))
        qs.append((np.clip(rng.standard_normal((b, s_q, h_q, 576)) / 10, -1, 1))
                  .astype(np.float32).astype(BF16))
    sched, _ = fm.get_mla_metadata()
    saved = None
    for layer in range(3):
        out, lse = decode(fm, backend, qs[layer], ks[layer], bt, sl, causal=True, sched=sched)
        check_dense_result(backend, out, lse, qs[layer], ks[layer], bt, sl, True)
        assert sched.have_initialized is True
        cfg = sched.config
        assert (cfg.b, cfg.s_q, cfg.h_q, cfg.page_block_size, cfg.h_k) == (b, s_q, h_q, 64, h_kv)
        assert cfg.causal is True and cfg.is_fp8_kvcache is False
        assert cfg.topk is None and cfg.extra_page_block_size is None and cfg.extra_topk is None
        md, ns = check_schedule(backend, sched.tile_scheduler_metadata, sched.num_splits,
                                sl.tolist())
        if saved is None:
            saved = (md.copy(), ns.copy())
        else:  # reused, not recomputed differently
            assert np.array_equal(md, saved[0]) and np.array_equal(ns, saved[1])


@pytest.mark.parametrize("change", ["b", "s_q", "h_q", "causal", "page_block_size", "h_kv"])
def test_sched_reuse_inconsistent_shape_asserts(fm, backend, rng, change):
    q, k, bt, sl = make_dense_case(rng, 2, 2, 16, 1, 100, varlen=False)
    sched, _ = fm.get_mla_metadata()
    decode(fm, backend, q, k, bt, sl, causal=True, sched=sched)
    causal = True
    if change == "b":
        q, k, bt, sl = make_dense_case(rng, 3, 2, 16, 1, 100, varlen=False)
    elif change == "s_q":
        q, k, bt, sl = make_dense_case(rng, 2, 1, 16, 1, 100, varlen=False)
    elif change == "h_q":
        q, k, bt, sl = make_dense_case(rng, 2, 2, 32, 1, 100, varlen=False)
    elif change == "causal":
        causal = False
    elif change == "page_block_size":
        q, k, bt, sl = make_dense_case(rng, 2, 2, 16, 1, 100, varlen=False, block=32)
    elif change == "h_kv":
        q, k, bt, sl = make_dense_case(rng, 2, 2, 16, 2, 100, varlen=False)
    with pytest.raises(AssertionError, match="inconsistent"):
        decode(fm, backend, q, k, bt, sl, causal=causal, sched=sched)


def test_sched_reuse_sparse_config_and_schedule(fm, backend, rng, threads):
    """A sparse first call records topk / extra config; the stored schedule follows the sparse
    token counts of §5.3 step 1; reuse with another topk asserts."""
    threads(9)
    fmt, b, s_q, h_q = R.MODEL1, 3, 2, 64
    q = q_for(rng, b, s_q, h_q, 512)
    pool = make_sparse_pool(rng, b, s_q, 300, 128, 16, fmt, with_length=True)
    extra = make_sparse_pool(rng, b, s_q, 150, 64, 8, fmt, with_length=True)
    sink = make_sink(rng, h_q)
    sched, _ = fm.get_mla_metadata()
    for _ in range(2):
        out, lse = sparse_decode(fm, backend, q, pool, 512 ** -0.55, sink, extra, sched=sched)
        check_sparse_decode(backend, out, lse, q, pool, 512 ** -0.55, sink, extra)
    cfg = sched.config
    assert (cfg.b, cfg.s_q, cfg.h_q, cfg.page_block_size, cfg.h_k) == (b, s_q, h_q, 16, 1)
    assert cfg.causal is False and cfg.is_fp8_kvcache is True
    assert cfg.topk == 128 and cfg.extra_page_block_size == 8 and cfg.extra_topk == 64
    n_tok = R.sparse_token_counts(b, 128, pool["topk_length"], 64, extra["topk_length"])
    check_schedule(backend, sched.tile_scheduler_metadata, sched.num_splits, n_tok)
    pool2 = make_sparse_pool(rng, b, s_q, 300, 64, 16, fmt)
    with pytest.raises(AssertionError, match="inconsistent"):
        sparse_decode(fm, backend, q, pool2, 512 ** -0.55, sink, extra, sched=sched)


def test_sparse_sched_without_lengths(fm, backend, rng, threads):
    threads(16)
    fmt, b, s_q, h_q = R.V32, 2, 1, 64
    q = q_for(rng, b, s_q, h_q, 576)
    pool = make_sparse_pool(rng, b, s_q, 300, 128, 64, fmt)
    sched, _ = fm.get_mla_metadata()
    out, lse = sparse_decode(fm, backend, q, pool, 576 ** -0.55, sched=sched)
    check_sparse_decode(backend, out, lse, q, pool, 576 ** -0.55)
    check_schedule(backend, sched.tile_scheduler_metadata, sched.num_splits,
                   R.sparse_token_counts(b, 128))


@pytest.mark.parametrize("parts", [1, 4])
def test_sched_reuse_with_changed_lengths(fm, backend, rng, threads, parts):
    """Reusing a stored schedule with other lengths: when the §5.3 schedule of the new lengths
    is the same (e.g. every request keeps its 64-token block count), the call is accepted and
    follows the new lengths; when it differs, the stored schedule is stale: ValueError naming
    tile_scheduler_metadata (conventions §4; FlashMLA: silently wrong)."""
    threads(parts)
    q, k, bt, sl = make_dense_case(rng, 2, 1, 16, 1, 300, varlen=False)
    sched, _ = fm.get_mla_metadata()
    decode(fm, backend, q, k, bt, sl, sched=sched)
    P = to_np(sched.tile_scheduler_metadata).shape[0]
    assert P == parts
    base = R.ref_schedule(sl.tolist(), P)
    for new in ([257, 300], [100, 300], [300, 10], [0, 300]):
        sl2 = np.array(new, dtype=np.int32)
        ref = R.ref_schedule(new, P)
        same = np.array_equal(ref[0][:, :7], base[0][:, :7]) and np.array_equal(ref[1], base[1])
        if same:
            out, lse = decode(fm, backend, q, k, bt, sl2, sched=sched)
            check_dense_result(backend, out, lse, q, k, bt, sl2, False)
        else:
            with pytest.raises(ValueError, match="tile_scheduler_metadata"):
                decode(fm, backend, q, k, bt, sl2, sched=sched)
    if parts == 4:  # the case above must have exercised both branches
        assert not np.array_equal(R.ref_schedule([100, 300], 4)[0], base[0])


# ------------------------------------------------------------------------------------------
# Legacy generation


@pytest.mark.parametrize("b,s_q,h_q,h_kv,s_k,zero_len", [
    (2, 1, 128, 1, 300, ()),
    (3, 2, 16, 1, 200, (1,)),
    (6, 2, 6, 2, 500, (0, 4)),
])
@pytest.mark.parametrize("parts", [0, 7])
def test_legacy_metadata_and_decode(fm, backend, rng, threads, b, s_q, h_q, h_kv, s_k, zero_len,
                                    parts):
    threads(parts)
    q, k, bt, sl = make_dense_case(rng, b, s_q, h_q, h_kv, s_k, True, zero_len)
    res = fm.get_mla_metadata(backend.arr(sl), s_q * h_q // h_kv, h_kv)
    assert isinstance(res, tuple) and len(res) == 2
    tile_md, num_splits = res
    check_schedule(backend, tile_md, num_splits, sl.tolist())
    for layer in range(2):  # reused by every layer
        out, lse = fm.flash_mla_with_kvcache(backend.arr(q), backend.arr(k), backend.arr(bt),
                                             backend.arr(sl), 512, tile_md, num_splits,
                                             causal=True)
        check_dense_result(backend, out, lse, q, k, bt, sl, True)
        q = np.ascontiguousarray(q[:, :, ::-1])  # another "layer": permuted heads


def test_legacy_metadata_keyword_form(fm, rng, threads):
    threads(5)
    sl = np.array([70, 800, 1], dtype=np.int32)
    tile_md, num_splits = fm.get_mla_metadata(cache_seqlens=sl, num_q_tokens_per_head_k=128,
                                              num_heads_k=1)
    check_schedule(BACKENDS["numpy"], tile_md, num_splits, sl.tolist())


def test_legacy_stale_schedule_is_value_error(fm, backend, rng, threads):
    threads(4)
    q, k, bt, sl = make_dense_case(rng, 2, 1, 16, 1, 300, varlen=False)
    tile_md, num_splits = fm.get_mla_metadata(backend.arr(sl), 16, 1)
    sl2 = np.array([60, 300], dtype=np.int32)
    with pytest.raises(ValueError, match="tile_scheduler_metadata"):
        fm.flash_mla_with_kvcache(backend.arr(q), backend.arr(k), backend.arr(bt),
                                  backend.arr(sl2), 512, tile_md, num_splits)


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 8, 13, 32, 100])
def test_legacy_metadata_random_lengths(fm, rng, threads, parts):
    """Random batches (zero lengths included) and part counts: bit-for-bit the §5.3 walk."""
    threads(parts)
    for _ in range(15):
        b = int(rng.integers(1, 12))
        sl = rng.integers(0, 2000, b).astype(np.int32)
        sl[rng.random(b) < 0.2] = 0
        tile_md, num_splits = fm.get_mla_metadata(sl, 128, 1)
        assert to_np(tile_md).shape == (parts, 8)
        check_schedule(BACKENDS["numpy"], tile_md, num_splits, sl.tolist())


def test_legacy_worked_example_with_four_parts():
    """§5.3 worked example: 4 parts (FLASHMLA_NUM_THREADS=4), seqlens [100, 1000, 0]."""
    code = textwrap.dedent("""
        import numpy as np, flash_mla
        md, ns = flash_mla.get_mla_metadata(np.array([100, 1000, 0], np.int32), 128, 1)
        print(md[:, :7].tolist()); print(ns.tolist())
    """)
    env = dict(os.environ, FLASHMLA_NUM_THREADS="4")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0] == str([[0, 1, 0, 2, 0, 0, 1], [1, 1, 2, 11, 1, 1, 1],
                            [1, 1, 11, 16, 2, 1, 1], [2, 2, 0, 0, 0, 0, 0]])
    assert lines[1] == "[0, 1, 4, 5]"
