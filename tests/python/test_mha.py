"""Dense MHA varlen prefill: flash_attn_varlen_func / _qkvpacked_func / _kvpacked_func forward,
backward through torch autograd (out.backward(dout) -> q.grad, ...) and through
flash_mla.flash_attn_varlen_backward for NumPy; GQA backward (reference §2.5, §3.5, §6.5;
conventions §10), checked against numpy_ref.ref_mha_fwd / ref_mha_bwd (exact float64)."""
import numpy as np
import pytest
import torch

import numpy_ref as R
from helpers import BACKENDS, BF16, cu_from_lens, elem_strides, randn_bf16, to_np


def make_mha_case(rng, b, mean_sq, mean_sk, h, h_kv, d, dv, varlen):
    """§6.5: seqlen_q = max(N(mean_sq, mean_sq/2), 1), seqlen_k = max(N(mean_sk, mean_sk/2),
    seqlen_q) when varlen; q, k, v, dO = randn/10 (bf16)."""
    if varlen:
        lq = [max(int(rng.normal(mean_sq, mean_sq / 2)), 1) for _ in range(b)]
        lk = [max(int(rng.normal(mean_sk, mean_sk / 2)), lq[i]) for i in range(b)]
    else:
        lq, lk = [mean_sq] * b, [mean_sk] * b
    tq, tk = sum(lq), sum(lk)
    q = randn_bf16(rng, (tq, h, d), clamp=None)
    k = randn_bf16(rng, (tk, h_kv, d), clamp=None)
    v = randn_bf16(rng, (tk, h_kv, dv), clamp=None)
    dout = randn_bf16(rng, (tq, h, dv), clamp=None)
    return q, k, v, dout, cu_from_lens(lq), cu_from_lens(lk), max(lq), max(lk)


def check_fwd(backend, out, lse, q, k, v, cu_q, cu_k, scale, causal, is_varlen=True):
    tq, h, _ = q.shape
    dv = v.shape[-1]
    assert backend.native(out) and backend.native(lse)
    out_np, lse_np = to_np(out), to_np(lse)
    assert out_np.dtype == BF16 and lse_np.dtype == np.float32
    assert out_np.shape == (tq, h, dv) and lse_np.shape == (tq, h)
    assert elem_strides(lse) == (1, tq), elem_strides(lse)  # head-major storage
    ref_out, ref_lse = R.ref_mha_fwd(q, k, v, cu_q, cu_k, scale, causal, is_varlen)
    R.check("out", out_np.astype(np.float32), ref_out.astype(np.float32), R.TOL_MHA_OUT)
    R.check("lse", lse_np, ref_lse.astype(np.float32), R.TOL_MHA_LSE)
    return out_np, lse_np


def check_grads(dq, dk, dv, q, k, v, dout, cu_q, cu_k, scale, causal, is_varlen=True,
                d_from_bf16_out=False, bf16_products=False, out_for_d=None):
    rdq, rdk, rdv = R.ref_mha_bwd(dout, q, k, v, cu_q, cu_k, scale, causal, is_varlen,
                                  d_from_bf16_out, bf16_products, out_for_d)
    for name, ans, ref, like in (("dq", dq, rdq, q), ("dk", dk, rdk, k), ("dv", dv, rdv, v)):
        a = to_np(ans)
        assert a.dtype == BF16 and a.shape == like.shape, (name, a.dtype, a.shape)
        R.check(name, a.astype(np.float32), ref.astype(np.float32), R.TOL_MHA_GRAD)


def torch_leaf(x):
    return BACKENDS["torch"].arr(x).clone().requires_grad_()


# b, mean_sq, mean_sk, h, h_kv, d, dv, causal, varlen
CASES = [
    (2, 40, 60, 4, 4, 128, 128, False, True),
    (2, 50, 50, 4, 2, 192, 128, True, True),
    (2, 32, 64, 4, 4, 192, 128, True, False),
    (2, 64, 48, 4, 2, 128, 128, False, False),
    (3, 30, 100, 4, 4, 128, 128, True, True),
]
IDS = [f"b{c[0]}-q{c[1]}-k{c[2]}-h{c[3]}_{c[4]}-d{c[5]}_{c[6]}-{'causal' if c[7] else 'full'}-"
       f"{'varlen' if c[8] else 'fixed'}" for c in CASES]


@pytest.mark.parametrize("b,mean_sq,mean_sk,h,h_kv,d,dv,causal,varlen", CASES, ids=IDS)
def test_mha_numpy_fwd_bwd(fm, rng, b, mean_sq, mean_sk, h, h_kv, d, dv, causal, varlen):
    q, k, v, dout, cu_q, cu_k, mq, mk = make_mha_case(rng, b, mean_sq, mean_sk, h, h_kv, d, dv,
                                                      varlen)
    scale = (d + 100) ** -0.5
    be = BACKENDS["numpy"]
    out, lse = fm.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, softmax_scale=scale,
                                         causal=causal, is_varlen=varlen)
    check_fwd(be, out, lse, q, k, v, cu_q, cu_k, scale, causal)
    dq, dk, dv_ = fm.flash_attn_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk,
                                                softmax_scale=scale, causal=causal,
                                                is_varlen=varlen)
    for x in (dq, dk, dv_):
        assert isinstance(x, np.ndarray)
    check_grads(dq, dk, dv_, q, k, v, dout, cu_q, cu_k, scale, causal)


@pytest.mark.parametrize("b,mean_sq,mean_sk,h,h_kv,d,dv,causal,varlen", CASES, ids=IDS)
def test_mha_torch_autograd(fm, rng, b, mean_sq, mean_sk, h, h_kv, d, dv, causal, varlen):
    q, k, v, dout, cu_q, cu_k, mq, mk = make_mha_case(rng, b, mean_sq, mean_sk, h, h_kv, d, dv,
                                                      varlen)
    scale = (d + 100) ** -0.5
    be = BACKENDS["torch"]
    tq, tk, tv = torch_leaf(q), torch_leaf(k), torch_leaf(v)
    out, lse = fm.flash_attn_varlen_func(tq, tk, tv, be.arr(cu_q), be.arr(cu_k), mq, mk,
                                         softmax_scale=scale, causal=causal, is_varlen=varlen)
    assert out.requires_grad
    check_fwd(be, out, lse, q, k, v, cu_q, cu_k, scale, causal)
    out.backward(be.arr(dout))
    assert tq.grad.dtype == torch.bfloat16 and tk.grad.dtype == torch.bfloat16
    check_grads(tq.grad, tk.grad, tv.grad, q, k, v, dout, cu_q, cu_k, scale, causal)


@pytest.mark.parametrize("h_kv", [4, 2])
def test_mha_sharp_softmax(fm, rng, h_kv):
    """Large logits (q = randn, softmax_scale 3): a peaked softmax, forward and backward. Here
    the reference follows the documented FlashAttention-2 numerics, which the cancellations of
    a peaked softmax make visible: D = rowsum(dout * out) from the bf16 out given to the
    backward, and, where the process runs a bf16 microkernel (avx512bf16, amx), P and dS rounded to bf16
    before their products (conventions §10, §11); exact values differ by more than the
    tolerance."""
    q, k, v, dout, cu_q, cu_k, mq, mk = make_mha_case(rng, 2, 40, 70, 4, h_kv, 128, 128, True)
    q = rng.standard_normal(q.shape).astype(np.float32).astype(BF16)
    out, lse = fm.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, softmax_scale=3.0,
                                         causal=True)
    check_fwd(BACKENDS["numpy"], out, lse, q, k, v, cu_q, cu_k, 3.0, True)
    grads = fm.flash_attn_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk,
                                          softmax_scale=3.0, causal=True)
    check_grads(*grads, q, k, v, dout, cu_q, cu_k, 3.0, True, out_for_d=to_np(out),
                bf16_products=fm._C.cpu_microkernel_name() in ("avx512bf16", "amx", "amx-emulated"))


def test_mha_default_scale_and_no_grad(fm, rng):
    """softmax_scale=None is d_qk ** -0.5; torch tensors without requires_grad work too."""
    q, k, v, _, cu_q, cu_k, mq, mk = make_mha_case(rng, 2, 30, 40, 4, 4, 192, 128, True)
    be = BACKENDS["torch"]
    out, lse = fm.flash_attn_varlen_func(be.arr(q), be.arr(k), be.arr(v), be.arr(cu_q),
                                         be.arr(cu_k), mq, mk)
    assert isinstance(out, torch.Tensor)
    check_fwd(be, out, lse, q, k, v, cu_q, cu_k, 192 ** -0.5, False)


def test_mha_qkvpacked(fm, backend, rng):
    q, k, v, dout, cu, _, mq, _ = make_mha_case(rng, 2, 40, 40, 4, 4, 128, 128, False)
    # same lengths for q and kv
    qkv = np.concatenate([q, k, v], axis=-1)
    scale = 228 ** -0.5
    if backend.name == "torch":
        tqkv = torch_leaf(qkv)
        out, lse = fm.flash_attn_varlen_qkvpacked_func(tqkv, backend.arr(cu), mq, 128,
                                                       softmax_scale=scale, causal=True)
        check_fwd(backend, out, lse, q, k, v, cu, cu, scale, True)
        out.backward(backend.arr(dout))
        g = to_np(tqkv.grad)
        assert g.shape == qkv.shape
        check_grads(g[..., :128], g[..., 128:256], g[..., 256:], q, k, v, dout, cu, cu, scale,
                    True)
    else:
        out, lse = fm.flash_attn_varlen_qkvpacked_func(qkv, cu, mq, 128, softmax_scale=scale,
                                                       causal=True)
        check_fwd(backend, out, lse, q, k, v, cu, cu, scale, True)


def test_mha_kvpacked(fm, backend, rng):
    q, k, v, dout, cu_q, cu_k, mq, mk = make_mha_case(rng, 2, 30, 60, 4, 2, 192, 128, True)
    kv = np.concatenate([k, v], axis=-1)
    scale = 292 ** -0.5
    if backend.name == "torch":
        tq, tkv = torch_leaf(q), torch_leaf(kv)
        out, lse = fm.flash_attn_varlen_kvpacked_func(tq, tkv, backend.arr(cu_q),
                                                      backend.arr(cu_k), mq, mk, 192,
                                                      softmax_scale=scale, causal=True)
        check_fwd(backend, out, lse, q, k, v, cu_q, cu_k, scale, True)
        out.backward(backend.arr(dout))
        g = to_np(tkv.grad)
        check_grads(tq.grad, g[..., :192], g[..., 192:], q, k, v, dout, cu_q, cu_k, scale, True)
    else:
        out, lse = fm.flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, mq, mk, 192,
                                                      softmax_scale=scale, causal=True)
        check_fwd(backend, out, lse, q, k, v, cu_q, cu_k, scale, True)


def test_mha_fixed_length_ignores_cu_seqlens_values(fm, rng):
    """is_varlen=False: every sequence has total/b tokens; cu_seqlens values are not read."""
    q, k, v, dout, cu_q, cu_k, mq, mk = make_mha_case(rng, 2, 24, 40, 4, 2, 128, 128, False)
    odd_q = np.array([0, 5, 48], dtype=np.int32)
    odd_k = np.array([0, 70, 80], dtype=np.int32)
    out, lse = fm.flash_attn_varlen_func(q, k, v, odd_q, odd_k, 24, 40, causal=True,
                                         is_varlen=False)
    check_fwd(BACKENDS["numpy"], out, lse, q, k, v, cu_q, cu_k, None, True)
    dq, dk, dv = fm.flash_attn_varlen_backward(dout, q, k, v, out, lse, odd_q, odd_k, 24, 40,
                                               causal=True, is_varlen=False)
    check_grads(dq, dk, dv, q, k, v, dout, cu_q, cu_k, None, True)


def test_mha_empty_rows_and_sequences(fm, backend, rng):
    """A sequence without keys: out 0, lse -inf, dq 0; causal with s_q > s_k: the first rows see
    nothing; a sequence without queries: dk = dv = 0 (conventions §10)."""
    lq, lk = [5, 4, 0], [0, 2, 6]
    h, d, dv = 4, 128, 128
    q = randn_bf16(rng, (sum(lq), h, d), clamp=None)
    k = randn_bf16(rng, (sum(lk), h, d), clamp=None)
    v = randn_bf16(rng, (sum(lk), h, dv), clamp=None)
    dout = randn_bf16(rng, (sum(lq), h, dv), clamp=None)
    cu_q, cu_k = cu_from_lens(lq), cu_from_lens(lk)
    A = backend.arr
    out, lse = fm.flash_attn_varlen_func(A(q), A(k), A(v), A(cu_q), A(cu_k), 5, 6, causal=True)
    out_np, lse_np = check_fwd(backend, out, lse, q, k, v, cu_q, cu_k, None, True)
    assert np.all(out_np[:5].astype(np.float32) == 0) and np.all(np.isneginf(lse_np[:5]))
    assert np.all(np.isneginf(lse_np[5:7])) and np.all(np.isfinite(lse_np[7:]))
    dq, dk, dv_ = fm.flash_attn_varlen_backward(A(dout), A(q), A(k), A(v), out, lse, A(cu_q),
                                                A(cu_k), 5, 6, causal=True)
    check_grads(dq, dk, dv_, q, k, v, dout, cu_q, cu_k, None, True)
    assert np.all(to_np(dq)[:7].astype(np.float32) == 0)
    assert np.all(to_np(dk)[2:].astype(np.float32) == 0)
    assert np.all(to_np(dv_)[2:].astype(np.float32) == 0)


@pytest.mark.parametrize("d,dv", [(64, 32), (256, 8)])
def test_mha_other_head_dims(fm, rng, d, dv):
    """Head dims beyond FlashMLA's pairs: multiples of 8 in [8, 256] (conventions §10)."""
    q, k, v, dout, cu_q, cu_k, mq, mk = make_mha_case(rng, 2, 20, 30, 2, 1, d, dv, True)
    out, lse = fm.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, causal=True)
    check_fwd(BACKENDS["numpy"], out, lse, q, k, v, cu_q, cu_k, None, True)
    dq, dk, dv_ = fm.flash_attn_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk,
                                                causal=True)
    check_grads(dq, dk, dv_, q, k, v, dout, cu_q, cu_k, None, True)


def test_mha_bitwise_deterministic(fm, rng):
    """Five runs give bitwise identical out, lse, dq, dk, dv (conventions §10)."""
    q, k, v, dout, cu_q, cu_k, mq, mk = make_mha_case(rng, 2, 60, 90, 4, 2, 128, 128, True)
    first = None
    for _ in range(5):
        out, lse = fm.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, causal=True)
        grads = fm.flash_attn_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk,
                                              causal=True)
        res = [out.view(np.uint16), lse.view(np.uint32)] + [g.view(np.uint16) for g in grads]
        if first is None:
            first = res
        else:
            for a, b in zip(first, res):
                assert np.array_equal(a, b)
