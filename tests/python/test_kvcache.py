"""FP8 KV-cache helpers: flash_mla.quantize_kv_cache (byte-exact against the NumPy quantizer of
§4.3 / §6.6 in both layouts §4.1, §4.2), flash_mla.dequantize_kv_cache (bit-exact against the
NumPy dequantizer, for uint8 / int8 / float8_e4m3fn caches and padded block strides) and
flash_mla.token_slots (§4.4)."""
import numpy as np
import pytest

import numpy_ref as R
from helpers import BF16, elem_strides, padded_blocks, randn_bf16, to_np


def special_cache(rng, nb, B, d, tile):
    """Random bf16 cache plus tokens that exercise the scale rule: a zero tile (scale floor
    2^-13), tiny values (subnormal e4m3), amax exactly 448 * 2^k (scale exactly 2^k), large
    values, negative values."""
    k = randn_bf16(rng, (nb, B, 1, d), div=1.0, clamp=None).astype(np.float32)
    t = k.reshape(nb * B, d)  # tokens (a view)
    assert t.shape[0] >= 4
    t[0, :tile] = 0.0
    t[1, :tile] = rng.standard_normal(tile) * 1e-6
    t[1, tile:2 * tile] = rng.uniform(-1, 1, tile)
    t[1, tile] = 448.0 * 2.0 ** -5
    t[2, :] *= 300.0
    t[3, :tile] = -np.abs(t[3, :tile])
    t[3, 0] = -448.0 * 4
    return k.astype(BF16)


def u8(x):
    a = to_np(x)
    assert a.dtype.itemsize == 1
    return a.view(np.uint8)


@pytest.mark.parametrize("fmt,B", [(R.V32, 4), (R.V32, 61), (R.MODEL1, 4), (R.MODEL1, 3)])
def test_quantize_byte_exact(fm, backend, rng, fmt, B):
    d, _, _, tile, _, bpt = R.FORMATS[fmt]
    k = special_cache(rng, 3, B, d, tile)
    expected = R.quantize_kv(k, fmt)
    for kv_format in (None, fmt.upper(), fmt.lower()):
        cache = fm.quantize_kv_cache(backend.arr(k), kv_format=kv_format)
        assert backend.native(cache)
        assert tuple(cache.shape) == (3, B, 1, bpt)
        got = u8(cache)
        if not np.array_equal(got, expected):
            pos = np.argwhere(got != expected)[:5].tolist()
            raise AssertionError(f"bytes differ at {pos}: got "
                                 f"{[int(got[tuple(p)]) for p in pos]}, expected "
                                 f"{[int(expected[tuple(p)]) for p in pos]}")


@pytest.mark.parametrize("fmt", [R.V32, R.MODEL1])
@pytest.mark.parametrize("cache_dtype", ["uint8", "int8", "fp8"])
def test_dequantize_bit_exact(fm, backend, rng, fmt, cache_dtype):
    if cache_dtype == "fp8" and backend.name == "torch":
        pytest.skip("torch 1.13 has no float8 dtype")
    d, _, _, tile, _, bpt = R.FORMATS[fmt]
    cache = R.quantize_kv(special_cache(rng, 2, 5, d, tile), fmt)
    expected = R.dequantize_kv(cache, fmt)
    arr = {"uint8": cache, "int8": cache.view(np.int8), "fp8": cache.view(R.FP8)}[cache_dtype]
    k = fm.dequantize_kv_cache(backend.arr(arr, "int8" if cache_dtype == "int8" else None))
    assert backend.native(k) and backend.dtype_of(k) == "bf16"
    got = to_np(k)
    assert got.shape == (2, 5, 1, d)
    assert np.array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("fmt", [R.V32, R.MODEL1])
def test_dequantize_random_bytes(fm, backend, rng, fmt):
    """Arbitrary e4m3 codes (no NaN) and arbitrary scales: V32 fp32 scales (not powers of two:
    bf16(fp8 * scale) with the product in fp32), MODEL1 UE8M0 exponents."""
    d, d_nope, _, tile, ntiles, bpt = R.FORMATS[fmt]
    nb, B = 2, 6
    codes = rng.integers(0, 256, (nb, B, d_nope)).astype(np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x3C
    rope = randn_bf16(rng, (nb, B, 64), div=1.0, clamp=None)
    if fmt == R.V32:
        scales = (rng.uniform(0.5, 2.0, (nb, B, ntiles)) *
                  2.0 ** rng.integers(-20, 5, (nb, B, ntiles))).astype("<f4")
        tok = np.concatenate([codes, scales.view(np.uint8).reshape(nb, B, 16),
                              rope.view(np.uint16).astype("<u2").view(np.uint8)
                              .reshape(nb, B, 128)], axis=-1)
        cache = tok.reshape(nb, B, 1, bpt)
    else:
        blocks = np.zeros((nb, B * bpt), np.uint8)
        data = np.concatenate([codes, rope.view(np.uint16).astype("<u2").view(np.uint8)
                               .reshape(nb, B, 128)], axis=-1)
        blocks[:, :576 * B] = data.reshape(nb, -1)
        sc = np.zeros((nb, B, 8), np.uint8)
        sc[..., :7] = rng.integers(100, 150, (nb, B, 7))
        blocks[:, 576 * B:] = sc.reshape(nb, -1)
        cache = blocks.reshape(nb, B, 1, bpt)
    expected = R.dequantize_kv(cache, fmt)
    got = to_np(fm.dequantize_kv_cache(backend.arr(cache)))
    mism = got.view(np.uint16) != expected.view(np.uint16)
    assert not mism.any(), (np.argwhere(mism)[:5].tolist(),
                            got[mism][:5].astype(np.float64), expected[mism][:5].astype(np.float64))


@pytest.mark.parametrize("fmt", [R.V32, R.MODEL1])
def test_dequantize_padded_blocks(fm, backend, rng, fmt):
    d, _, _, tile, _, bpt = R.FORMATS[fmt]
    B = 4
    cache = R.quantize_kv(randn_bf16(rng, (3, B, 1, d)), fmt)
    padded = padded_blocks(cache, 576 * 2 if fmt == R.MODEL1 else 656)
    assert elem_strides(padded)[0] > B * bpt
    got = to_np(fm.dequantize_kv_cache(backend.arr(padded)))
    assert np.array_equal(got.view(np.uint16), R.dequantize_kv(cache, fmt).view(np.uint16))


def test_quantize_into_helpers_roundtrip_error_bound(fm, backend, rng):
    """dequantize(quantize(k)) is within half an e4m3 step of k per tile (a loose sanity check
    of both helpers together)."""
    k = randn_bf16(rng, (2, 8, 1, 576), div=1.0, clamp=None)
    deq = to_np(fm.dequantize_kv_cache(fm.quantize_kv_cache(backend.arr(k))))
    x, y = k.astype(np.float64), deq.astype(np.float64)
    assert np.array_equal(x[..., 512:], y[..., 512:])  # RoPE verbatim
    err = np.abs(x[..., :512] - y[..., :512]).reshape(2, 8, 4, 128)
    amax = np.abs(x[..., :512]).reshape(2, 8, 4, 128).max(-1, keepdims=True)
    assert np.all(err <= amax * 2.0 ** -3 + 1e-12)


def test_token_slots(fm, backend, rng):
    B = 16
    b, per = 3, 5
    bt = rng.permutation(b * per + 4)[:b * per].reshape(b, per).astype(np.int32)
    pos = rng.integers(0, per * B, (b, 2, 40)).astype(np.int32)
    pos[rng.random(pos.shape) < 0.2] = -1
    got = fm.token_slots(backend.arr(bt), backend.arr(pos), B)
    assert backend.native(got) and backend.dtype_of(got) == "int32"
    got = to_np(got)
    assert got.shape == pos.shape
    expected = R.token_slots(bt, pos, B)
    assert np.array_equal(got, expected)
    assert np.all(got[pos == -1] == -1)
    # explicit formula on a few entries
    i, s, c = 1, 0, int(np.argmax(pos[1, 0] >= 0))
    p = int(pos[i, s, c])
    assert got[i, s, c] == bt[i, p // B] * B + p % B
