"""Independent NumPy references for the flash_mla tests (reference §3-§6).

Everything here is written from the behaviour reference (shared/spec/flashmla-reference.md) and
docs/conventions.md, in float64 NumPy. Nothing calls the package or the C++ library: expected
values in the tests come only from this module.

Contents:
  * check_is_allclose           FlashMLA's comparison rule (§6.1)
  * fp8_e4m3_encode / _decode   OCP E4M3 "fn" conversion written from the bit format
  * quantize_kv / dequantize_kv the V32 (656 B/token) and MODEL1 (584 B/token) layouts (§4)
  * token_slots                 abs_indices2indices_in_kvcache (§4.4)
  * ref_dense_decode, ref_sparse_decode, ref_sparse_prefill, ref_mha_fwd, ref_mha_bwd (§3)
  * ref_schedule                the split-KV greedy walk (§5.3) and schedule_coverage (§5.2/5.4)
"""

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
FP8 = np.dtype(ml_dtypes.float8_e4m3fn)

V32 = "v32"
MODEL1 = "model1"
# format -> (d_qk, d_nope, d_rope, tile, num_tiles, bytes_per_token)   (§4, §6.6)
FORMATS = {
    V32: (576, 512, 64, 128, 4, 656),
    MODEL1: (512, 448, 64, 64, 7, 584),
}


def to_bf16(x):
    """Round to bfloat16 (round to nearest even) via float32."""
    return np.asarray(x, dtype=np.float32).astype(BF16)


def f64(x):
    return np.asarray(x).astype(np.float64)


# ------------------------------------------------------------------------------------------
# §6.1 check_is_allclose


def check_is_allclose(name, ans, ref, abs_tol=1e-5, rel_tol=1e-2, cos_diff_tol=1e-7):
    """FlashMLA's comparison: identical shape and dtype; +inf/-inf/NaN positions must coincide;
    an element fails only when both abs_err >= abs_tol and rel_err >= rel_tol; and the
    cosine-type difference over the tensor must be <= cos_diff_tol. Raises AssertionError."""
    ans = np.asarray(ans)
    ref = np.asarray(ref)
    assert ans.shape == ref.shape, f"{name}: shape {ans.shape} != reference {ref.shape}"
    assert ans.dtype == ref.dtype, f"{name}: dtype {ans.dtype} != reference {ref.dtype}"
    a = ans.astype(np.float32).astype(np.float64)
    r = ref.astype(np.float32).astype(np.float64)
    for label, pred in (("+inf", np.isposinf), ("-inf", np.isneginf), ("NaN", np.isnan)):
        ma, mr = pred(a), pred(r)
        if not np.array_equal(ma, mr):
            where = np.argwhere(ma != mr)[:5].tolist()
            raise AssertionError(
                f"{name}: {label} positions differ (answer has {int(ma.sum())}, reference "
                f"{int(mr.sum())}); first differing positions {where}, answer values "
                f"{[a[tuple(p)] for p in where]}, reference values {[r[tuple(p)] for p in where]}")
    special = ~np.isfinite(a)
    a = np.where(special, 0.0, a)
    r = np.where(special, 0.0, r)
    abs_err = np.abs(a - r)
    rel_err = abs_err / (np.abs(r) + 1e-6)
    fail = (abs_err >= abs_tol) & (rel_err >= rel_tol)
    if fail.any():
        worst = np.unravel_index(np.argmax(np.where(fail, abs_err, -1.0)), a.shape)
        raise AssertionError(
            f"{name}: {int(fail.sum())} of {a.size} elements exceed abs_tol={abs_tol} and "
            f"rel_tol={rel_tol}; worst at {tuple(int(i) for i in worst)}: answer {a[worst]!r}, "
            f"reference {r[worst]!r}")
    denom = float(np.sum(a * a + r * r))
    if float(np.sum(r * r)) < 1e-12:
        cos_diff = 0.0
    else:
        cos_diff = 1.0 - 2.0 * float(np.sum(a * r)) / denom
    assert abs(cos_diff) <= cos_diff_tol, (
        f"{name}: cos_diff {cos_diff:.3e} > {cos_diff_tol:.3e}")


# Per-test tolerances (§6.2-§6.5): (abs_tol, rel_tol, cos_diff_tol)
TOL_DENSE_OUT = (8e-4, 2.01 / 128, 5e-6)
TOL_DENSE_LSE = (1e-6, 8.01 / 65536, 1e-7)
TOL_SPARSE_DEC_OUT = (1e-3, 2.01 / 128, 5e-6)
TOL_SPARSE_DEC_LSE = (1e-6, 8.01 / 65536, 1e-7)
TOL_PREFILL_OUT = (8e-4, 3.01 / 128, 7e-6)
TOL_PREFILL_LSE = (1e-6, 2.01 / 65536, 1e-7)
TOL_MHA_OUT = (1e-3, 8.01 / 128, 7e-6)
TOL_MHA_LSE = (1e-6, 2.01 / 65536, 1e-7)
TOL_MHA_GRAD = (1e-3, 8.01 / 128, 7e-6)


def check(name, ans, ref, tol):
    check_is_allclose(name, ans, ref, *tol)


# ------------------------------------------------------------------------------------------
# FP8 E4M3 "fn": 1 sign, 4 exponent (bias 7), 3 mantissa bits; no inf; 0x7F/0xFF are NaN;
# max finite 448; subnormals k * 2^-9.


def _fp8_decode_table():
    vals = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e = (code >> 3) & 0xF
        m = code & 0x7
        if e == 0xF and m == 0x7:
            vals[code] = np.nan
        elif e == 0:
            vals[code] = sign * (m / 8.0) * 2.0 ** -6
        else:
            vals[code] = sign * (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return vals


FP8_TABLE = _fp8_decode_table()
_FP8_POS = FP8_TABLE[:0x7F]  # codes 0x00..0x7E, increasing, 0 .. 448


def fp8_e4m3_decode(codes):
    return FP8_TABLE[np.asarray(codes, dtype=np.uint8)]


def fp8_e4m3_encode(x):
    """float64 -> uint8 code, round to nearest, ties to even mantissa; |x| in (448, 464] -> 448,
    larger magnitudes and NaN -> NaN (0x7F, with the sign bit)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    hi = np.clip(np.searchsorted(_FP8_POS, a, side="left"), 1, 0x7E)
    lo = hi - 1
    lo_v, hi_v = _FP8_POS[lo], _FP8_POS[hi]
    d_lo, d_hi = a - lo_v, hi_v - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo).astype(np.int64)
    code = np.where(a <= 0.0, 0, code)
    code = np.where(a > 448.0, 0x7E, code)
    code = np.where((a > 464.0) | np.isnan(a), 0x7F, code)
    code = code | np.where(np.signbit(x), 0x80, 0)
    return code.astype(np.uint8)


def _pow2_scale(amax):
    """scale = 2^ceil(log2(max(amax / 448, 1e-4))) computed exactly (§4.3)."""
    s = np.maximum(np.asarray(amax, dtype=np.float64) / 448.0, 1e-4)
    frac, exp = np.frexp(s)  # s = frac * 2^exp, frac in [0.5, 1)
    e = np.where(frac == 0.5, exp - 1, exp)
    return e.astype(np.int64)


def _bf16_bytes(x):
    """bf16 array (..., n) -> its little-endian bytes (..., 2n)."""
    u = np.ascontiguousarray(x.astype(BF16)).view(np.uint16).astype("<u2")
    return u.view(np.uint8).reshape(x.shape[:-1] + (2 * x.shape[-1],))


def _bytes_bf16(b):
    b = np.ascontiguousarray(b, dtype=np.uint8)
    return b.view("<u2").astype(np.uint16).view(BF16)


def quantize_kv(k, fmt):
    """Reference quantizer (§4.3) of a bf16 cache (num_blocks, B, 1, d_qk) into the byte layout
    of `fmt` (§4.1 / §4.2). Returns uint8 (num_blocks, B, 1, bytes_per_token), contiguous."""
    d_qk, d_nope, d_rope, tile, ntiles, bpt = FORMATS[fmt]
    k = np.asarray(k)
    assert k.dtype == BF16 and k.shape[2] == 1 and k.shape[3] == d_qk
    nb, B = k.shape[:2]
    x = k.reshape(nb, B, d_qk).astype(np.float64)
    nope = x[..., :d_nope].reshape(nb, B, ntiles, tile)
    amax = np.abs(nope).max(axis=-1)                      # (nb, B, ntiles)
    e = _pow2_scale(amax)                                  # exponent of the scale
    scaled = nope / np.ldexp(1.0, e)[..., None]           # exact: power of two
    codes = fp8_e4m3_encode(scaled).reshape(nb, B, d_nope)
    rope = _bf16_bytes(k.reshape(nb, B, d_qk)[..., d_nope:])  # (nb, B, 128)
    if fmt == V32:
        scales = np.ldexp(1.0, e).astype("<f4").view(np.uint8).reshape(nb, B, 4 * ntiles)
        tok = np.concatenate([codes, scales, rope], axis=-1)
        assert tok.shape[-1] == bpt
        return tok.reshape(nb, B, 1, bpt)
    # MODEL1: block-structured
    out = np.zeros((nb, B * bpt), dtype=np.uint8)
    data = np.concatenate([codes, rope], axis=-1)          # (nb, B, 576)
    out[:, :576 * B] = data.reshape(nb, 576 * B)
    sc = np.zeros((nb, B, 8), dtype=np.uint8)
    sc[..., :ntiles] = (e + 127).astype(np.uint8)
    out[:, 576 * B:] = sc.reshape(nb, 8 * B)
    return out.reshape(nb, B, 1, bpt)


def _block_bytes(cache):
    """(nb, B, 1, bpt) 1-byte cache (any block stride) -> uint8 (nb, B * bpt) of each block's
    meaningful bytes."""
    c = np.asarray(cache)
    c = c.view(np.uint8) if c.dtype != np.uint8 else c
    nb, B, _, bpt = c.shape
    return np.stack([np.ascontiguousarray(c[i]).reshape(B * bpt) for i in range(nb)]) \
        if nb else np.zeros((0, B * bpt), np.uint8)


def split_cache(cache, fmt):
    """Fields of an FP8 cache: (codes (nb,B,d_nope) uint8, scale exponents/values
    (nb,B,ntiles) float64 values of the scales, rope bf16 (nb,B,64))."""
    d_qk, d_nope, d_rope, tile, ntiles, bpt = FORMATS[fmt]
    blk = _block_bytes(cache)
    nb = blk.shape[0]
    B = blk.shape[1] // bpt
    if fmt == V32:
        tok = blk.reshape(nb, B, bpt)
        codes = tok[..., :512]
        scales = np.ascontiguousarray(tok[..., 512:528]).view("<f4").astype(np.float32)
        rope = _bytes_bf16(tok[..., 528:656])
        return codes, scales, rope
    data = blk[:, :576 * B].reshape(nb, B, 576)
    codes = data[..., :448]
    rope = _bytes_bf16(data[..., 448:576])
    sc = blk[:, 576 * B:].reshape(nb, B, 8)[..., :ntiles]
    return codes, sc, rope


def dequantize_kv(cache, fmt):
    """Dequantizer as the kernels see the cache (§4.3): V32 bf16(fp8 * fp32 scale) with the
    product in fp32; MODEL1 bf16(bf16(fp8) * bf16(2^(e-127))). Returns bf16 (nb, B, 1, d_qk)."""
    d_qk, d_nope, d_rope, tile, ntiles, bpt = FORMATS[fmt]
    codes, sc, rope = split_cache(cache, fmt)
    nb, B = codes.shape[:2]
    vals = fp8_e4m3_decode(codes).reshape(nb, B, ntiles, tile)
    if fmt == V32:
        prod = vals.astype(np.float32) * sc.astype(np.float32)[..., None]   # fp32 multiply
        nope = prod.astype(BF16)
    else:
        scale = np.where(sc == 255, np.nan, np.ldexp(1.0, sc.astype(np.int64) - 127))
        a = vals.astype(BF16).astype(np.float64)
        s = scale.astype(BF16).astype(np.float64)
        nope = (a * s[..., None]).astype(BF16)     # exact product, one rounding = bf16 mul
    nope = nope.reshape(nb, B, d_nope)
    return np.concatenate([nope, rope], axis=-1).reshape(nb, B, 1, d_qk)


def poison_tokens(cache, fmt, mask):
    """Overwrite the tokens where mask (nb, B) is True with NaN everywhere (fp8 NaN codes, NaN
    scales, NaN RoPE). `cache` is a writable uint8 array (nb, B, 1, bpt), any block stride."""
    d_qk, d_nope, d_rope, tile, ntiles, bpt = FORMATS[fmt]
    nan_bf16 = _bf16_bytes(np.full((1, d_rope), np.nan, dtype=np.float32))[0]
    for blk, tok in np.argwhere(mask):
        if fmt == V32:
            t = cache[blk, tok, 0]
            t[:512] = 0x7F
            t[512:528] = np.full(4, np.nan, "<f4").view(np.uint8)
            t[528:656] = nan_bf16
        else:
            B = cache.shape[1]
            flat = cache[blk].reshape(-1) if cache[blk].flags.c_contiguous else None
            assert flat is not None
            flat[576 * tok:576 * tok + 448] = 0x7F
            flat[576 * tok + 448:576 * tok + 576] = nan_bf16
            flat[576 * B + 8 * tok:576 * B + 8 * tok + 7] = 0xFF


# ------------------------------------------------------------------------------------------
# §4.4 logical positions -> physical token slots


def token_slots(block_table, positions, page_block_size):
    bt = np.asarray(block_table, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.int64)
    b = bt.shape[0]
    out = np.full(pos.shape, -1, dtype=np.int64)
    for i in range(b):
        p = pos[i]
        valid = p != -1
        pv = np.where(valid, p, 0)
        slot = bt[i][pv // page_block_size] * page_block_size + pv % page_block_size
        out[i] = np.where(valid, slot, -1)
    return out.astype(np.int32)


# ------------------------------------------------------------------------------------------
# §3 attention references (float64)


def _softmax_rows(logits):
    """logits (n, m) with -inf for invalid -> (p (n, m), lse (n,)); lse -inf for empty rows."""
    m = np.max(logits, axis=-1, initial=-np.inf)
    ok = np.isfinite(m)
    ms = np.where(ok, m, 0.0)
    with np.errstate(invalid="ignore"):
        e = np.exp(logits - ms[:, None])
    s = e.sum(axis=-1)
    with np.errstate(divide="ignore"):
        lse = np.where(ok, ms + np.log(np.where(ok, s, 1.0)), -np.inf)
        p = np.where(ok[:, None], e / np.where(ok, s, 1.0)[:, None], 0.0)
    return p, lse


def _apply_sink(o, lse, sink):
    """o (h, dv), lse (h,), sink (h,) natural units: o / (1 + exp(sink - lse)); empty rows 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        f = 1.0 / (1.0 + np.exp(sink - lse))
    f = np.where(np.isfinite(lse), f, 0.0)
    return o * f[:, None]


def ref_dense_decode(q, k_cache, block_table, cache_seqlens, head_dim_v=512, causal=False,
                     softmax_scale=None):
    """§3.2. q (b, s_q, h_q, d); k_cache (nb, B, h_kv, d) (bf16/fp16 values or a dequantized
    cache); returns out (b, s_q, h_q, dv) float64 and lse (b, h_q, s_q) float64 (+inf empty)."""
    q = f64(q)
    b, s_q, h_q, d = q.shape
    nb, B, h_kv, _ = k_cache.shape
    g = h_q // h_kv
    scale = d ** -0.5 if softmax_scale is None else softmax_scale
    out = np.zeros((b, s_q, h_q, head_dim_v))
    lse = np.full((b, h_q, s_q), np.inf)
    bt = np.asarray(block_table, dtype=np.int64)
    for i in range(b):
        L = int(cache_seqlens[i])
        pos = np.arange(L)
        k = f64(np.asarray(k_cache)[bt[i, pos // B], pos % B])  # (L, h_kv, d) — only valid slots
        for s in range(s_q):
            vis = L - s_q + s + 1 if (causal and s_q > 1) else L
            vis = min(max(vis, 0), L)
            if vis == 0:
                continue
            for hk in range(h_kv):
                qq = q[i, s, hk * g:(hk + 1) * g]
                kk = k[:vis, hk]
                p, l = _softmax_rows(scale * qq @ kk.T)
                out[i, s, hk * g:(hk + 1) * g] = p @ kk[:, :head_dim_v]
                lse[i, hk * g:(hk + 1) * g, s] = l
    return out, lse


def ref_sparse_decode(q, kv_flat, indices, scale, topk_length=None, attn_sink=None,
                      extra_kv_flat=None, extra_indices=None, extra_topk_length=None, d_v=512):
    """§3.3. kv_flat: (num_slots, d_qk) dequantized tokens (physical slot order). Returns out
    (b, s_q, h_q, d_v) float64 and lse (b, h_q, s_q) float64 (+inf for empty rows)."""
    q = f64(q)
    b, s_q, h_q, d = q.shape
    idx = np.asarray(indices, dtype=np.int64)
    topk = idx.shape[-1]
    out = np.zeros((b, s_q, h_q, d_v))
    lse = np.full((b, h_q, s_q), np.inf)
    for i in range(b):
        for s in range(s_q):
            n = topk if topk_length is None else int(topk_length[i])
            row = idx[i, s]
            valid = (row != -1) & (np.arange(topk) < n)
            ks = [f64(kv_flat[row[valid]])]
            if extra_kv_flat is not None:
                eidx = np.asarray(extra_indices, dtype=np.int64)[i, s]
                etopk = eidx.shape[-1]
                en = etopk if extra_topk_length is None else int(extra_topk_length[i])
                evalid = (eidx != -1) & (np.arange(etopk) < en)
                ks.append(f64(extra_kv_flat[eidx[evalid]]))
            K = np.concatenate(ks, axis=0)
            if K.shape[0] == 0:
                continue
            p, l = _softmax_rows(scale * q[i, s] @ K.T)
            o = p @ K[:, :d_v]
            if attn_sink is not None:
                o = _apply_sink(o, l, f64(attn_sink))
            out[i, s] = o
            lse[i, :, s] = l
    return out, lse


def ref_sparse_prefill(q, kv, indices, sm_scale, attn_sink=None, topk_length=None, d_v=512):
    """§3.4. Returns out (s_q, h_q, d_v), max_logits (s_q, h_q) (-inf empty), lse (s_q, h_q)
    (+inf empty), float64."""
    q = f64(q)
    kv = f64(kv)
    s_q, h_q, d = q.shape
    s_kv = kv.shape[0]
    idx = np.asarray(indices, dtype=np.int64)
    topk = idx.shape[-1]
    out = np.zeros((s_q, h_q, d_v))
    max_logits = np.full((s_q, h_q), -np.inf)
    lse = np.full((s_q, h_q), np.inf)
    for s in range(s_q):
        row = idx[s, 0]
        n = topk if topk_length is None else int(topk_length[s])
        valid = (row >= 0) & (row < s_kv) & (np.arange(topk) < n)
        K = kv[row[valid], 0]
        if K.shape[0] == 0:
            continue
        logits = sm_scale * q[s] @ K.T
        p, l = _softmax_rows(logits)
        o = p @ K[:, :d_v]
        if attn_sink is not None:
            o = _apply_sink(o, l, f64(attn_sink))
        out[s] = o
        max_logits[s] = logits.max(axis=-1)
        lse[s] = l
    return out, max_logits, lse


def _mha_segments(cu_q, cu_k, total_q, total_k, is_varlen):
    cu_q = np.asarray(cu_q, dtype=np.int64)
    cu_k = np.asarray(cu_k, dtype=np.int64)
    b = len(cu_q) - 1
    if is_varlen:
        return [(cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]) for i in range(b)]
    sq, sk = total_q // b, total_k // b
    return [(i * sq, (i + 1) * sq, i * sk, (i + 1) * sk) for i in range(b)]


def _mha_mask(sq, sk, causal):
    if not causal:
        return np.ones((sq, sk), dtype=bool)
    r = np.arange(sq)[:, None]
    j = np.arange(sk)[None, :]
    return j <= r + sk - sq


def ref_mha_fwd(q, k, v, cu_q, cu_k, softmax_scale=None, causal=False, is_varlen=True):
    """§3.5 forward: out (total_q, h_q, dv), lse (total_q, h_q) float64 (-inf for rows that see
    no key, out 0 there)."""
    q, k, v = f64(q), f64(k), f64(v)
    tq, h_q, d = q.shape
    tk, h_kv, dv = v.shape
    g = h_q // h_kv
    scale = d ** -0.5 if softmax_scale is None else softmax_scale
    out = np.zeros((tq, h_q, dv))
    lse = np.full((tq, h_q), -np.inf)
    for q0, q1, k0, k1 in _mha_segments(cu_q, cu_k, tq, tk, is_varlen):
        mask = _mha_mask(q1 - q0, k1 - k0, causal)
        for h in range(h_q):
            hk = h // g
            logits = np.where(mask, scale * q[q0:q1, h] @ k[k0:k1, hk].T, -np.inf)
            p, l = _softmax_rows(logits)
            out[q0:q1, h] = p @ v[k0:k1, hk]
            lse[q0:q1, h] = l
    return out, lse


def ref_mha_bwd(dout, q, k, v, cu_q, cu_k, softmax_scale=None, causal=False, is_varlen=True,
                d_from_bf16_out=False, bf16_products=False, out_for_d=None):
    """Exact float64 gradients of sum(dout * out) w.r.t. q, k, v (GQA: a KV head sums its query
    heads). Returns dq, dk, dv float64. d_from_bf16_out: compute D = rowsum(dout * out) from the
    bf16-rounded forward output, as FlashAttention-2 style backwards do (conventions §10) — with
    a peaked softmax, dS = P * (dP - D) cancels and the rounding of out dominates the error.
    bf16_products: P and dS rounded to bf16 before the products that use them (dV = P^T dO;
    dQ = dS K, dK = dS^T Q), as FlashAttention-2 on GPUs and the avx512bf16 CPU microkernel do
    (conventions §11) — with a peaked softmax dK and dQ cancel, and that rounding shows too.
    out_for_d: the forward output given to the backward (total_q, h_q, d_v); D is computed from
    it, as the backward does (its own out may round differently in some elements)."""
    q, k, v, do = f64(q), f64(k), f64(v), f64(dout)
    tq, h_q, d = q.shape
    tk, h_kv, dv_ = v.shape
    g = h_q // h_kv
    scale = d ** -0.5 if softmax_scale is None else softmax_scale
    dq = np.zeros_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    for q0, q1, k0, k1 in _mha_segments(cu_q, cu_k, tq, tk, is_varlen):
        mask = _mha_mask(q1 - q0, k1 - k0, causal)
        for h in range(h_q):
            hk = h // g
            Q, K, V, dO = q[q0:q1, h], k[k0:k1, hk], v[k0:k1, hk], do[q0:q1, h]
            logits = np.where(mask, scale * Q @ K.T, -np.inf)
            P, _ = _softmax_rows(logits)
            O = P @ V
            if d_from_bf16_out:
                O = O.astype(np.float32).astype(BF16).astype(np.float64)
            if out_for_d is not None:
                O = f64(out_for_d)[q0:q1, h]
            dP = dO @ V.T
            Dr = np.sum(dO * O, axis=-1, keepdims=True)
            dS = P * (dP - Dr)
            if bf16_products:
                P = P.astype(np.float32).astype(BF16).astype(np.float64)
                dS = dS.astype(np.float32).astype(BF16).astype(np.float64)
            dq[q0:q1, h] += scale * dS @ K
            dk[k0:k1, hk] += scale * dS.T @ Q
            dv[k0:k1, hk] += P.T @ dO
    return dq, dk, dv


# ------------------------------------------------------------------------------------------
# §5.3 scheduler


def sparse_token_counts(b, topk, topk_length=None, extra_topk=0, extra_topk_length=None):
    """§5.3 step 1, sparse mode."""
    n = []
    for i in range(b):
        t = topk if topk_length is None else int(topk_length[i])
        if t == 0:
            t = 1
        if extra_topk > 0:
            t = -(-t // 64) * 64 + (extra_topk if extra_topk_length is None
                                    else int(extra_topk_length[i]))
        n.append(t)
    return n


def ref_schedule(n_tok, num_parts, block=64, overhead=5):
    """The greedy walk of §5.3. Returns (records (P, 8) int32, num_splits (b+1,) int32)."""
    n_tok = [int(x) for x in n_tok]
    b = len(n_tok)
    last_blk = [max(n - 1, 0) // block for n in n_tok]
    n_blk = [lb + 1 for lb in last_blk]
    total = sum(nb + overhead for nb in n_blk)
    payload = -(-total // num_parts) + overhead
    recs = np.zeros((num_parts, 8), dtype=np.int32)
    splits = np.zeros(b + 1, dtype=np.int32)
    req = blk = split = cum = 0
    for p in range(num_parts):
        begin_req, begin_blk, begin_split, first = req, blk, split, int(blk != 0)
        budget = payload
        while req < b:
            remaining = n_blk[req] - blk
            if budget >= remaining + overhead:
                cum += split + 1
                splits[req + 1] = cum
                budget -= remaining + overhead
                req += 1
                blk = split = 0
            else:
                if budget - overhead > 0:
                    blk += budget - overhead
                    split += 1
                break
        end_req = req if blk > 0 else req - 1
        if blk > 0:
            end_blk = blk
        else:
            end_blk = 0 if n_tok[req - 1] == 0 else last_blk[req - 1] + 1
        last = int(end_blk != last_blk[end_req] + 1 and n_tok[end_req] != 0)
        if begin_req == end_req:
            first = last = int(first or last)
        recs[p] = [begin_req, end_req, begin_blk, end_blk, begin_split, first, last, 0]
    assert req == b and blk == 0 and split == 0
    return recs, splits


def schedule_coverage(recs, num_splits, n_tok, block=64):
    """Checks the structural invariants of a schedule (§5.2, §5.4) and raises AssertionError on
    a violation: num_splits starts at 0 and increases by >= 1 per request; the records' block
    ranges (§5.4) cover every block of every request exactly once, in piece order; each part's
    piece count of a request matches num_splits; flags say whether a request is split."""
    recs = np.asarray(recs)
    ns = np.asarray(num_splits).astype(np.int64)
    b = len(n_tok)
    assert recs.ndim == 2 and recs.shape[1] == 8, recs.shape
    assert ns.shape == (b + 1,), ns.shape
    assert ns[0] == 0, ns
    assert np.all(np.diff(ns) >= 1), f"num_splits not increasing by >= 1: {ns}"
    n_blk = [max(int(n) - 1, 0) // block + 1 for n in n_tok]
    cover = [np.zeros(nb, dtype=np.int64) for nb in n_blk]
    pieces = [[] for _ in range(b)]  # (split ordinal, begin block)
    for p, r in enumerate(recs.tolist()):
        br, er, bb, eb, bs, fs, ls = r[:7]
        if br >= b:
            continue
        assert 0 <= br <= er < b, f"part {p}: bad request range {r}"
        for req in range(br, er + 1):
            lo = bb if req == br else 0
            hi = eb if req == er else n_blk[req]
            if n_tok[req] == 0:
                hi = n_blk[req]  # an empty request's single piece processes its one (empty) block
            ordinal = bs if req == br else 0
            assert 0 <= lo < hi <= n_blk[req], f"part {p}, request {req}: blocks [{lo},{hi})"
            cover[req][lo:hi] += 1
            pieces[req].append((ordinal, lo))
            split = ns[req + 1] - ns[req] > 1
            if req == br:
                assert fs == int(split), f"part {p}: is_first_req_splitted {fs}, split {split}"
            if req == er:
                assert ls == int(split), f"part {p}: is_last_req_splitted {ls}, split {split}"
            if br < req < er:
                assert not split, f"part {p}: request {req} in the middle is split"
    for req in range(b):
        assert np.all(cover[req] == 1), f"request {req}: block coverage {cover[req].tolist()}"
        ords = sorted(pieces[req], key=lambda t: t[1])
        assert [o for o, _ in ords] == list(range(len(ords))), \
            f"request {req}: piece ordinals {ords}"
        assert len(ords) == ns[req + 1] - ns[req], \
            f"request {req}: {len(ords)} pieces, num_splits says {ns[req + 1] - ns[req]}"
