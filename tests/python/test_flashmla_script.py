"""FlashMLA-style user code runs unchanged on the CPU package (reference §1, §2, §2.7): the
package surface (``__all__``, ``__version__``, FlashMLASchedMeta's home), a decoding step in
both call generations (metadata once per step, decode for several layers, torch tensors), a
training step through autograd, and sparse prefill. Each script is plain FlashMLA usage with
device "cpu"; its results are then checked against the NumPy reference."""
import textwrap

import numpy as np

import numpy_ref as R
from helpers import to_np

DECODE_SCRIPT = textwrap.dedent("""
    import math
    import random

    import torch

    from flash_mla import flash_mla_with_kvcache, get_mla_metadata

    device = "cpu"
    torch.manual_seed(0)
    random.seed(0)

    b, s_q, h_q, h_kv, d, dv = 3, 2, 16, 1, 576, 512
    block_size = 64
    num_layers = 3
    causal = True

    cache_seqlens = torch.tensor(
        [max(int(random.normalvariate(200, 100)), s_q) for _ in range(b)],
        dtype=torch.int32, device=device)
    max_seqlen = cache_seqlens.max().item()
    max_seqlen_pad = math.ceil(max_seqlen / 256) * 256
    block_table = torch.arange(b * max_seqlen_pad // block_size, dtype=torch.int32,
                               device=device).view(b, max_seqlen_pad // block_size)
    block_table = block_table.view(-1)[torch.randperm(block_table.numel())].view(b, -1)

    qs, kvcaches = [], []
    for _ in range(num_layers):
        q = (torch.randn(b, s_q, h_q, d, dtype=torch.bfloat16, device=device) / 10).clamp(-1, 1)
        blocked_k = (torch.randn(block_table.numel(), block_size, h_kv, d, dtype=torch.bfloat16,
                                 device=device) / 10).clamp(-1, 1)
        for i in range(b):
            cur = cache_seqlens[i].item()
            cur_blocks = math.ceil(cur / block_size)
            for j in range(cur_blocks, block_table.size(1)):
                blocked_k[block_table[i, j]] = float("nan")
            if cur % block_size:
                blocked_k[block_table[i, cur_blocks - 1], cur % block_size:] = float("nan")
        qs.append(q)
        kvcaches.append(blocked_k)

    # Legacy generation (README of FlashMLA <= 2025): metadata arrays once per step.
    tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    legacy = []
    for i in range(num_layers):
        o_i, lse_i = flash_mla_with_kvcache(
            qs[i], kvcaches[i], block_table, cache_seqlens, dv,
            tile_scheduler_metadata, num_splits, causal=causal,
        )
        legacy.append((o_i, lse_i))

    # Current generation: a lazily-filled FlashMLASchedMeta shared by the layers of the step.
    sched_meta, _ = get_mla_metadata()
    current = []
    for i in range(num_layers):
        o_i, lse_i = flash_mla_with_kvcache(
            qs[i], kvcaches[i], block_table, cache_seqlens, dv, sched_meta, None, causal=causal,
        )
        current.append((o_i, lse_i))
""")


TRAIN_SCRIPT = textwrap.dedent("""
    import random

    import torch

    from flash_mla import flash_attn_varlen_func

    torch.manual_seed(1)
    random.seed(1)
    b, h, h_k, d, dv = 2, 4, 4, 192, 128
    seqlens_q = [max(int(random.normalvariate(48, 24)), 1) for _ in range(b)]
    seqlens_k = [max(int(random.normalvariate(64, 32)), sq) for sq in seqlens_q]
    cu_seqlens_q = torch.tensor([0] + seqlens_q, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_seqlens_k = torch.tensor([0] + seqlens_k, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    total_q, total_k = sum(seqlens_q), sum(seqlens_k)
    q = (torch.randn(total_q, h, d) / 10).to(torch.bfloat16).requires_grad_()
    k = (torch.randn(total_k, h_k, d) / 10).to(torch.bfloat16).requires_grad_()
    v = (torch.randn(total_k, h_k, dv) / 10).to(torch.bfloat16).requires_grad_()
    dout = (torch.randn(total_q, h, dv) / 10).to(torch.bfloat16)
    softmax_scale = (d + 100) ** -0.5

    out, lse = flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max(seqlens_q),
                                      max(seqlens_k), causal=True, softmax_scale=softmax_scale)
    out.backward(dout)
""")


PREFILL_SCRIPT = textwrap.dedent("""
    import torch

    from flash_mla import flash_mla_sparse_fwd

    torch.manual_seed(2)
    s_q, s_kv, h_q, d_qk, d_v, topk = 16, 200, 64, 576, 512, 128
    q = (torch.randn(s_q, h_q, d_qk) / 10).to(torch.bfloat16)
    kv = (torch.randn(s_kv, 1, d_qk) / 10).to(torch.bfloat16)
    indices = torch.full((s_q, 1, topk), s_kv, dtype=torch.int32)  # invalid marker
    for t in range(s_q):
        n = min(topk, (t + 1) * 12)  # causal-ish prefix
        indices[t, 0, :n] = torch.randperm(s_kv)[:n]
    sm_scale = 1 / d_qk ** 0.5
    out, max_logits, lse = flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v)
""")


def run(script):
    ns = {"__name__": "__flashmla_script__"}
    exec(compile(script, "<flashmla-script>", "exec"), ns)
    return ns


def test_package_surface(fm):
    assert fm.__version__ == "1.0.0"
    assert set(fm.__all__) == {"get_mla_metadata", "flash_mla_with_kvcache",
                               "flash_attn_varlen_func", "flash_attn_varlen_qkvpacked_func",
                               "flash_attn_varlen_kvpacked_func", "flash_mla_sparse_fwd"}
    for name in fm.__all__ + ["flash_attn_varlen_backward", "quantize_kv_cache",
                              "dequantize_kv_cache", "token_slots"]:
        assert callable(getattr(fm, name)), name
    from flash_mla.flash_mla_interface import FlashMLASchedMeta
    assert isinstance(fm.get_mla_metadata()[0], FlashMLASchedMeta)
    import inspect
    sig = inspect.signature(fm.flash_mla_with_kvcache)
    assert list(sig.parameters) == [
        "q", "k_cache", "block_table", "cache_seqlens", "head_dim_v", "tile_scheduler_metadata",
        "num_splits", "softmax_scale", "causal", "is_fp8_kvcache", "indices", "attn_sink",
        "extra_k_cache", "extra_indices_in_kvcache", "topk_length", "extra_topk_length"]
    assert [sig.parameters[p].default for p in list(sig.parameters)[6:]] == \
        [None, None, False, False, None, None, None, None, None, None]
    sig = inspect.signature(fm.flash_mla_sparse_fwd)
    assert list(sig.parameters) == ["q", "kv", "indices", "sm_scale", "d_v", "attn_sink",
                                    "topk_length"]
    assert sig.parameters["d_v"].default == 512
    assert sig.parameters["sm_scale"].default is inspect.Parameter.empty
    sig = inspect.signature(fm.flash_attn_varlen_func)
    assert list(sig.parameters) == ["q", "k", "v", "cu_seqlens_qo", "cu_seqlens_kv",
                                    "max_seqlen_qo", "max_seqlen_kv", "dropout_p",
                                    "softmax_scale", "causal", "deterministic", "is_varlen"]
    sig = inspect.signature(fm.flash_attn_varlen_qkvpacked_func)
    assert list(sig.parameters)[:4] == ["qkv", "cu_seqlens", "max_seqlen", "head_dim_qk"]
    sig = inspect.signature(fm.flash_attn_varlen_kvpacked_func)
    assert list(sig.parameters)[:7] == ["q", "kv", "cu_seqlens_qo", "cu_seqlens_kv",
                                        "max_seqlen_qo", "max_seqlen_kv", "head_dim_qk"]


def test_decode_step_script_both_generations(threads):
    import torch
    threads(8)  # several scheduler parts, so that requests are split
    ns = run(DECODE_SCRIPT)
    cache_seqlens = to_np(ns["cache_seqlens"])
    block_table = to_np(ns["block_table"])
    tsm, num_splits = ns["tile_scheduler_metadata"], ns["num_splits"]
    assert isinstance(tsm, torch.Tensor) and tsm.dtype == torch.int32
    assert isinstance(num_splits, torch.Tensor) and num_splits.dtype == torch.int32
    R.schedule_coverage(to_np(tsm), to_np(num_splits), cache_seqlens.tolist())
    assert np.array_equal(to_np(ns["sched_meta"].tile_scheduler_metadata), to_np(tsm))
    for layer in range(ns["num_layers"]):
        q, k = to_np(ns["qs"][layer]), to_np(ns["kvcaches"][layer])
        ref_out, ref_lse = R.ref_dense_decode(q, k, block_table, cache_seqlens, 512, True)
        for gen in ("legacy", "current"):
            out, lse = ns[gen][layer]
            assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16
            assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32
            assert tuple(lse.shape) == (3, 16, 2) and lse.is_contiguous()
            R.check(f"{gen} out[{layer}]", to_np(out), ref_out.astype(R.BF16), R.TOL_DENSE_OUT)
            R.check(f"{gen} lse[{layer}]", to_np(lse), ref_lse.astype(np.float32),
                    R.TOL_DENSE_LSE)
        # the same schedule gives bitwise identical results in both generations
        assert torch.equal(ns["legacy"][layer][0], ns["current"][layer][0])
        assert torch.equal(ns["legacy"][layer][1], ns["current"][layer][1])


def test_training_step_script():
    ns = run(TRAIN_SCRIPT)
    q, k, v, dout = (to_np(ns[n]) for n in ("q", "k", "v", "dout"))
    cu_q, cu_k = to_np(ns["cu_seqlens_q"]), to_np(ns["cu_seqlens_k"])
    scale = ns["softmax_scale"]
    ref_out, ref_lse = R.ref_mha_fwd(q, k, v, cu_q, cu_k, scale, True)
    R.check("out", to_np(ns["out"]).astype(np.float32), ref_out.astype(np.float32),
            R.TOL_MHA_OUT)
    R.check("lse", to_np(ns["lse"]), ref_lse.astype(np.float32), R.TOL_MHA_LSE)
    assert ns["lse"].stride() == (1, q.shape[0])
    rdq, rdk, rdv = R.ref_mha_bwd(dout, q, k, v, cu_q, cu_k, scale, True)
    for name, ref in (("q", rdq), ("k", rdk), ("v", rdv)):
        g = ns[name].grad
        assert g is not None and g.dtype == ns[name].dtype
        R.check(f"d{name}", to_np(g).astype(np.float32), ref.astype(np.float32),
                R.TOL_MHA_GRAD)


def test_sparse_prefill_script():
    ns = run(PREFILL_SCRIPT)
    q, kv, idx = to_np(ns["q"]), to_np(ns["kv"]), to_np(ns["indices"])
    ref_out, ref_ml, ref_lse = R.ref_sparse_prefill(q, kv, idx, ns["sm_scale"])
    R.check("out", to_np(ns["out"]).astype(np.float32), ref_out.astype(np.float32),
            R.TOL_PREFILL_OUT)
    R.check("max_logits", to_np(ns["max_logits"]), ref_ml.astype(np.float32), R.TOL_PREFILL_LSE)
    R.check("lse", to_np(ns["lse"]), ref_lse.astype(np.float32), R.TOL_PREFILL_LSE)
