"""FlashMLA's Python API (version 1.0.0) on the flashmla C++ library (``flash_mla._C``).

Every function takes torch tensors or NumPy arrays (bf16 as ``ml_dtypes.bfloat16``) and returns
results of the same kind (torch: on the input's device). CUDA tensors run the library's CUDA
backend on torch's current stream when it was built with one (``_C.has_cuda_backend()``); the
MHA functions and the KV-cache codec are CPU-only. Arguments are validated by the C++
library (ValueError / TypeError naming the argument; RuntimeError for what this build cannot
run); only FlashMLA's own Python-level checks raise AssertionError.
"""
import dataclasses
from typing import Any, Optional, Tuple

from . import _C
from . import _tensors as T

_D_V = 512  # the only head_dim_v / d_v of the MLA kernels


# ---------------------------------------------------------------------------------------------
# Split-KV schedule.

@dataclasses.dataclass
class FlashMLASchedMeta:
    """Split-KV schedule of one decoding step, shared by every layer of the step. Created empty
    by ``get_mla_metadata()``; filled by the first ``flash_mla_with_kvcache`` call that gets it,
    reused (not recomputed) by later calls, which must have the same Config and the same
    ``cache_seqlens`` / ``topk_length`` / ``extra_topk_length`` values."""

    @dataclasses.dataclass
    class Config:
        b: int
        s_q: int
        h_q: int
        page_block_size: int
        h_k: int

        causal: bool
        is_fp8_kvcache: bool
        topk: Optional[int]

        extra_page_block_size: Optional[int]
        extra_topk: Optional[int]

    have_initialized: bool = False

    config: Optional[Config] = None

    tile_scheduler_metadata: Optional[Any] = None  # (num_sm_parts, 8) int32
    num_splits: Optional[Any] = None               # (b + 1,) int32


def get_mla_metadata(*args, **kwargs):
    """``get_mla_metadata() -> (FlashMLASchedMeta(), None)``: an empty schedule, computed lazily
    by the first ``flash_mla_with_kvcache`` call that receives it. Arguments are ignored, except
    in the legacy form::

        get_mla_metadata(cache_seqlens, num_q_tokens_per_head_k, num_heads_k, num_heads_q=None,
                         is_fp8_kvcache=False, topk=None)
            -> (tile_scheduler_metadata (num_sm_parts, 8) int32, num_splits (b + 1,) int32)

    chosen when ``cache_seqlens`` (first positional or keyword argument) is an array; the
    schedule is computed now (sparse mode with ``topk`` tokens per request when ``topk`` is
    given), in cache_seqlens' framework, for ``flash_mla_with_kvcache(..., tsm, num_splits)``.
    """
    first = args[0] if args else kwargs.get("cache_seqlens")
    if first is not None and T.is_array(first):
        return _legacy_get_mla_metadata(*args, **kwargs)
    return FlashMLASchedMeta(), None


def _legacy_get_mla_metadata(cache_seqlens, num_q_tokens_per_head_k, num_heads_k,
                             num_heads_q=None, is_fp8_kvcache=False, topk=None):
    fn = "get_mla_metadata"
    (b,) = T.shape_of(cache_seqlens, fn, "cache_seqlens", 1)
    h_kv = T.to_int(num_heads_k, fn, "num_heads_k")
    rows = T.to_int(num_q_tokens_per_head_k, fn, "num_q_tokens_per_head_k")
    shape = _C.MlaDecodeShape()
    shape.batch, shape.q_len = b, 1
    shape.num_heads_q, shape.num_heads_kv = rows * h_kv, h_kv
    if topk is not None:
        topk = T.to_int(topk, fn, "topk")
    return _compute_schedule(cache_seqlens, shape, cache_seqlens=cache_seqlens, topk=topk)


def _compute_schedule(like, shape, cache_seqlens=None, topk=None, topk_length=None,
                      extra_topk=None, extra_topk_length=None, ctx=None):
    """(tile_scheduler_metadata, num_splits) for ``shape`` with ``mla_num_sm_parts`` parts:
    dense from cache_seqlens, or sparse (topk given) as the sparse decode counts tokens."""
    ctx = ctx or T.context(like)
    with T.on_device(like):
        parts = _C.mla_num_sm_parts(shape, ctx, T.device_of(like))
    meta = T.empty(like, (parts, 8), "int32")
    splits = T.empty(like, (shape.batch + 1,), "int32")
    args = _C.MlaMetadataArgs()
    args.num_sm_parts = parts
    fn = "get_mla_metadata"
    if topk is not None:
        args.batch, args.topk = shape.batch, topk
        args.extra_topk = extra_topk or 0
        T.set_views(args, fn, topk_length=topk_length, extra_topk_length=extra_topk_length)
    else:
        T.set_views(args, fn, cache_seqlens=cache_seqlens)
    T.set_views(args, fn, tile_scheduler_metadata=meta, num_splits=splits)
    with T.on_device(like):
        _C.get_mla_metadata(args, ctx)
    return meta, splits


# ---------------------------------------------------------------------------------------------
# MLA decode.

_HELPER_MSG = (" Your input arguments are inconsistent with sched_meta. Please make sure the input "
               "arguments are consistent across different invocations of flash_mla_with_kvcache "
               "on the same sched_meta.")


def _dim(x, fn, name, i):
    """x.shape[i] (None when x is None, or when x has too few dimensions: C++ reports it)."""
    if x is None:
        return None
    shape = T.shape_of(x, fn, name, len(getattr(x, "shape", ())))
    return shape[i] if -len(shape) <= i < len(shape) else None


def flash_mla_with_kvcache(
    q,
    k_cache,
    block_table,
    cache_seqlens,
    head_dim_v: int,
    tile_scheduler_metadata,
    num_splits=None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    indices=None,
    attn_sink=None,
    extra_k_cache=None,
    extra_indices_in_kvcache=None,
    topk_length=None,
    extra_topk_length=None,
) -> Tuple[Any, Any]:
    """MLA decoding attention over a paged KV cache.

    Arguments:
        q: (b, s_q, h_q, d_qk) bf16 (dense: or fp16); d_qk 576, or 512 for sparse MODEL1.
        k_cache: dense: (num_blocks, page_block_size, h_kv, d_qk), q's dtype; sparse: FP8
            (num_blocks, page_block_size, 1, 656 | 584) float8_e4m3fn / int8 / uint8.
        block_table: (b, max_blocks_per_seq) int32; dense only.
        cache_seqlens: (b,) int32; dense only.
        head_dim_v: must be 512.
        tile_scheduler_metadata: a FlashMLASchedMeta from get_mla_metadata(), or the legacy
            (num_sm_parts, 8) int32 array (then num_splits is its (b + 1,) partner).
        num_splits: None, or the legacy array.
        softmax_scale: default q.shape[-1] ** -0.5.
        causal: bottom-right aligned causal mask (dense only).
        is_fp8_kvcache: must be True with indices.
        indices: (b, s_q, topk) int32 physical token slots (block * page_block_size + offset),
            -1 invalid; enables sparse attention.
        attn_sink: (h_q,) float32, sparse only.
        extra_k_cache, extra_indices_in_kvcache: an optional second cache and its indices.
        topk_length, extra_topk_length: (b,) int32 leading columns used per request.

    Returns:
        out: (b, s_q, h_q, 512), q's dtype.
        lse: (b, h_q, s_q) float32, natural log (sparse: a transposed view of a (b, s_q, h_q)
            buffer).
    """
    fn = "flash_mla_with_kvcache"
    sched_meta = tile_scheduler_metadata
    legacy = not isinstance(sched_meta, FlashMLASchedMeta) and T.is_array(sched_meta)
    if not legacy:
        assert isinstance(sched_meta, FlashMLASchedMeta), \
            "tile_scheduler_metadata must be of type FlashMLASchedMeta"
        assert num_splits is None, "num_splits must be None"

    b, s_q, h_q, d_qk = T.shape_of(q, fn, "q", 4)
    topk = _dim(indices, fn, "indices", -1)
    extra_page_block_size = _dim(extra_k_cache, fn, "extra_k_cache", 1)
    extra_topk = _dim(extra_indices_in_kvcache, fn, "extra_indices_in_kvcache", -1)
    if softmax_scale is None and d_qk > 0:
        softmax_scale = d_qk ** (-0.5)

    if not legacy:
        _, page_block_size, h_k, _ = T.shape_of(k_cache, fn, "k_cache", 4)
        config = FlashMLASchedMeta.Config(b, s_q, h_q, page_block_size, h_k, causal,
                                          is_fp8_kvcache, topk, extra_page_block_size,
                                          extra_topk)
        if not sched_meta.have_initialized:
            if indices is not None:
                assert not causal, ("causal must be False when indices_in_kvcache is not None "
                                    "(i.e. sparse attention is enabled)")
            sched_meta.have_initialized = True
            sched_meta.config = config
        else:
            assert sched_meta.config is not None, "sched_meta.config must be set." + _HELPER_MSG
            for field in dataclasses.fields(FlashMLASchedMeta.Config):
                old, new = getattr(sched_meta.config, field.name), getattr(config, field.name)
                assert old == new, (f"sched_meta.config.{field.name} is {old!r}, but the "
                                    f"arguments give {new!r}." + _HELPER_MSG)

    if indices is not None:
        assert not causal, "causal must be False when sparse attention is enabled"
        assert is_fp8_kvcache, "is_fp8_kvcache must be True when sparse attention is enabled"
    else:
        assert (attn_sink is None and extra_k_cache is None and extra_indices_in_kvcache is None
                and topk_length is None and extra_topk_length is None), (
            "indices_in_kvcache, attn_sink, extra_k_cache, extra_indices_in_kvcache, topk_length "
            "and extra_topk_length must be None when dense attention is used.")
        assert block_table is not None and cache_seqlens is not None, \
            "block_table and cache_seqlens must be provided when dense attention is used."

    out = T.empty(q, (b, s_q, h_q, _D_V))
    if indices is not None:
        lse = T.swap(T.empty(q, (b, s_q, h_q), "fp32"), 1, 2)
    else:
        lse = T.empty(q, (b, h_q, s_q), "fp32")

    args = _C.MlaDecodeArgs()
    args.head_dim_v = T.to_int(head_dim_v, fn, "head_dim_v")
    if softmax_scale is not None:
        args.softmax_scale = T.to_float(softmax_scale, fn, "softmax_scale")
    args.causal = bool(causal)
    T.set_views(args, fn, q=q, k_cache=k_cache, block_table=block_table,
                cache_seqlens=cache_seqlens, indices=indices, topk_length=topk_length,
                attn_sink=attn_sink, extra_k_cache=extra_k_cache,
                extra_indices_in_kvcache=extra_indices_in_kvcache,
                extra_topk_length=extra_topk_length, out=out, lse=lse)
    if legacy:
        T.set_views(args, fn, tile_scheduler_metadata=sched_meta, num_splits=num_splits)
        with T.on_device(q):
            _C.flash_mla_with_kvcache(args, T.context(q))
        return out, lse

    if sched_meta.tile_scheduler_metadata is not None:
        T.set_views(args, fn, tile_scheduler_metadata=sched_meta.tile_scheduler_metadata,
                    num_splits=sched_meta.num_splits)
        with T.on_device(q):
            _C.flash_mla_with_kvcache(args, T.context(q))
        return out, lse

    # First call: the C++ call validates everything and computes the schedule it needs (with
    # mla_num_sm_parts parts, like get_mla_metadata below); then the same schedule is stored.
    ctx = T.context(q)
    with T.on_device(q):
        _C.flash_mla_with_kvcache(args, ctx)
    shape = _C.MlaDecodeShape()
    shape.batch, shape.q_len, shape.num_heads_q, shape.num_heads_kv = b, s_q, h_q, config.h_k
    if indices is not None:
        meta, splits = _compute_schedule(q, shape, topk=topk, topk_length=topk_length,
                                         extra_topk=extra_topk,
                                         extra_topk_length=extra_topk_length, ctx=ctx)
    else:
        meta, splits = _compute_schedule(q, shape, cache_seqlens=cache_seqlens, ctx=ctx)
    sched_meta.tile_scheduler_metadata = meta
    sched_meta.num_splits = splits
    return out, lse


# ---------------------------------------------------------------------------------------------
# Sparse MLA prefill.

def flash_mla_sparse_fwd(
    q,
    kv,
    indices,
    sm_scale: float,
    d_v: int = 512,
    attn_sink=None,
    topk_length=None,
) -> Tuple[Any, Any, Any]:
    """Sparse MLA prefill: each query token attends to its own ``topk`` key tokens.

    Arguments:
        q: (s_q, h_q, d_qk) bf16, d_qk 512 or 576.
        kv: (s_kv, 1, d_qk) bf16; V = kv[..., :512].
        indices: (s_q, 1, topk) int32 rows of kv; invalid entries (< 0 or >= s_kv) are skipped.
        sm_scale: softmax scale (required).
        d_v: must be 512.
        attn_sink: optional (h_q,) float32.
        topk_length: optional (s_q,) int32, leading columns used per query token.

    Returns:
        (out (s_q, h_q, 512) bf16, max_logits (s_q, h_q) float32, lse (s_q, h_q) float32),
        natural-log units; an empty row gives out 0, max_logits -inf, lse +inf.
    """
    fn = "flash_mla_sparse_fwd"
    s_q, h_q = T.shape_of(q, fn, "q", 2)
    out = T.empty(q, (s_q, h_q, _D_V))
    max_logits = T.empty(q, (s_q, h_q), "fp32")
    lse = T.empty(q, (s_q, h_q), "fp32")
    args = _C.SparsePrefillArgs()
    args.sm_scale = T.to_float(sm_scale, fn, "sm_scale")
    args.d_v = T.to_int(d_v, fn, "d_v")
    T.set_views(args, fn, q=q, kv=kv, indices=indices, attn_sink=attn_sink,
                topk_length=topk_length, out=out, max_logits=max_logits, lse=lse)
    with T.on_device(q):
        _C.flash_mla_sparse_fwd(args, T.context(q))
    return out, max_logits, lse


# ---------------------------------------------------------------------------------------------
# Dense MHA varlen prefill.

def _mha_args(fn, q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
              causal, softmax_scale, is_varlen, deterministic, out, lse):
    args = _C.MhaFwdArgs()
    T.set_views(args, fn, q=q, k=k, v=v, cu_seqlens_qo=cu_seqlens_qo,
                cu_seqlens_kv=cu_seqlens_kv, out=out, lse=lse)
    args.max_seqlen_qo = T.to_int(max_seqlen_qo, fn, "max_seqlen_qo")
    args.max_seqlen_kv = T.to_int(max_seqlen_kv, fn, "max_seqlen_kv")
    if softmax_scale is None:
        d_qk = int(q.shape[-1])
        softmax_scale = d_qk ** (-0.5) if d_qk > 0 else None
    if softmax_scale is not None:
        args.softmax_scale = T.to_float(softmax_scale, fn, "softmax_scale")
    args.causal = bool(causal)
    args.deterministic = bool(deterministic)
    args.is_varlen = bool(is_varlen)
    return args


def _varlen_fwd(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                causal, softmax_scale, is_varlen, deterministic=False):
    fn = "flash_attn_varlen_fwd"  # names as the C++ errors
    total_q, h_q = T.shape_of(q, fn, "q", 2)
    d_v = T.shape_of(v, fn, "v", 3)[2]
    out = T.empty(q, (total_q, h_q, d_v))
    lse = T.swap(T.empty(q, (h_q, total_q), "fp32"), 0, 1)  # head-major, strides (1, total_q)
    args = _mha_args(fn, q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                     causal, softmax_scale, is_varlen, deterministic, out, lse)
    _C.flash_attn_varlen_fwd(args, T.context())
    return out, lse


def flash_attn_varlen_backward(dout, q, k, v, out, lse, cu_seqlens_qo, cu_seqlens_kv,
                               max_seqlen_qo, max_seqlen_kv, softmax_scale=None, causal=False,
                               is_varlen=True):
    """Backward of ``flash_attn_varlen_func`` without autograd (NumPy, or torch by hand):
    gradients of sum(dout * out) with respect to q, k, v (none through lse). GQA supported.

    ``out`` and ``lse`` are the forward's results; the other arguments are the forward's.
    Returns (dq, dk, dv), contiguous bf16 shaped like q, k, v; bitwise deterministic.
    """
    fn = "flash_attn_varlen_bwd"  # names as the C++ errors
    dq = T.empty(q, T.shape_of(q, fn, "q", 3))
    dk = T.empty(k, T.shape_of(k, fn, "k", 3))
    dv = T.empty(v, T.shape_of(v, fn, "v", 3))
    fwd = _mha_args(fn, q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                    causal, softmax_scale, is_varlen, False, out, lse)
    args = _C.MhaBwdArgs()
    args.fwd = fwd
    T.set_views(args, fn, dout=dout, dq=dq, dk=dk, dv=dv)
    _C.flash_attn_varlen_bwd(args, T.context())
    return dq, dk, dv


_varlen_function = None


def _autograd_function():
    """FlashAttnVarlenFunc, a torch.autograd.Function (created on first use: torch optional)."""
    global _varlen_function
    if _varlen_function is None:
        import torch

        class FlashAttnVarlenFunc(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo,
                        max_seqlen_kv, causal=False, softmax_scale=None, is_varlen=True):
                out, lse = _varlen_fwd(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo,
                                       max_seqlen_kv, causal, softmax_scale, is_varlen)
                saved = (q, k, v, out, lse, cu_seqlens_qo, cu_seqlens_kv)
                ctx.save_for_backward(*(x if T.is_torch(x) else None for x in saved))
                ctx.others = [None if T.is_torch(x) else x for x in saved]  # e.g. NumPy cu_seqlens
                ctx.max_seqlen_qo = max_seqlen_qo
                ctx.max_seqlen_kv = max_seqlen_kv
                ctx.causal = causal
                ctx.softmax_scale = softmax_scale
                ctx.is_varlen = is_varlen
                return out, lse

            @staticmethod
            def backward(ctx, dout, dlse):
                del dlse  # no gradient through lse (as FlashMLA)
                q, k, v, out, lse, cu_seqlens_qo, cu_seqlens_kv = (
                    x if y is None else y for x, y in zip(ctx.saved_tensors, ctx.others))
                if dout.dim() > 0 and dout.stride(-1) != 1:
                    dout = dout.contiguous()
                dq, dk, dv = flash_attn_varlen_backward(
                    dout, q, k, v, out, lse, cu_seqlens_qo, cu_seqlens_kv, ctx.max_seqlen_qo,
                    ctx.max_seqlen_kv, ctx.softmax_scale, ctx.causal, ctx.is_varlen)
                need = ctx.needs_input_grad
                return (dq if need[0] else None, dk if need[1] else None,
                        dv if need[2] else None, None, None, None, None, None, None, None)

        _varlen_function = FlashAttnVarlenFunc
    return _varlen_function


def _varlen(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
            softmax_scale, causal, deterministic, is_varlen):
    if T.is_torch(q):
        import torch
        if torch.is_grad_enabled() and any(T.is_torch(x) and x.requires_grad
                                           for x in (q, k, v)):
            return _autograd_function().apply(q, k, v, cu_seqlens_qo, cu_seqlens_kv,
                                              max_seqlen_qo, max_seqlen_kv, causal,
                                              softmax_scale, is_varlen)
    return _varlen_fwd(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                       causal, softmax_scale, is_varlen, deterministic)


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_qo,
    cu_seqlens_kv,
    max_seqlen_qo: int,
    max_seqlen_kv: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    deterministic: bool = False,
    is_varlen: bool = True,
) -> Tuple[Any, Any]:
    """Dense varlen attention (prefill / training), differentiable for torch inputs.

    Arguments:
        q: (total_q, h_q, d_qk) bf16; k: (total_kv, h_kv, d_qk) bf16, h_kv divides h_q;
            v: (total_kv, h_kv, d_v) bf16. d_qk, d_v multiples of 8 up to 256.
        cu_seqlens_qo, cu_seqlens_kv: (b + 1,) int32 prefix sums from 0.
        max_seqlen_qo, max_seqlen_kv: upper bounds of the sequence lengths.
        dropout_p: must be 0.0.
        softmax_scale: default d_qk ** -0.5.
        causal: bottom-right aligned causal mask.
        deterministic: accepted either way (every output is deterministic).
        is_varlen: False: every sequence has total_q / b queries and total_kv / b keys.

    Returns:
        out: (total_q, h_q, d_v), q's dtype.
        lse: (total_q, h_q) float32 natural log, stored head-major (strides (1, total_q));
            -inf for a row that sees no key.
    """
    assert dropout_p == 0.0, "dropout_p must be 0.0 (dropout is not supported)"
    return _varlen(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo, max_seqlen_kv,
                   softmax_scale, causal, deterministic, is_varlen)


def flash_attn_varlen_qkvpacked_func(
    qkv,
    cu_seqlens,
    max_seqlen: int,
    head_dim_qk: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    deterministic: bool = False,
    is_varlen: bool = True,
) -> Tuple[Any, Any]:
    """``flash_attn_varlen_func`` on qkv (total, h, 2 * head_dim_qk + d_v): q = qkv[..., :d_qk],
    k = qkv[..., d_qk:2 d_qk], v = qkv[..., 2 d_qk:]; queries and keys share cu_seqlens."""
    assert dropout_p == 0.0, "dropout_p must be 0.0 (dropout is not supported)"
    d = head_dim_qk
    return _varlen(qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:], cu_seqlens, cu_seqlens,
                   max_seqlen, max_seqlen, softmax_scale, causal, deterministic, is_varlen)


def flash_attn_varlen_kvpacked_func(
    q,
    kv,
    cu_seqlens_qo,
    cu_seqlens_kv,
    max_seqlen_qo: int,
    max_seqlen_kv: int,
    head_dim_qk: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    deterministic: bool = False,
    is_varlen: bool = True,
) -> Tuple[Any, Any]:
    """``flash_attn_varlen_func`` on kv (total_kv, h_kv, head_dim_qk + d_v):
    k = kv[..., :head_dim_qk], v = kv[..., head_dim_qk:]."""
    assert dropout_p == 0.0, "dropout_p must be 0.0 (dropout is not supported)"
    d = head_dim_qk
    return _varlen(q, kv[..., :d], kv[..., d:], cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo,
                   max_seqlen_kv, softmax_scale, causal, deterministic, is_varlen)
