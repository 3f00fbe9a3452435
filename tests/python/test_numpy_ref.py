"""Self-checks of the NumPy reference (numpy_ref.py), so that a wrong reference cannot hide a
wrong package: the FP8 codec against ml_dtypes, the scheduler against the worked example of
§5.3, the quantizer's byte layout against hand-built tokens, and the comparison rule."""
import ml_dtypes
import numpy as np
import pytest

import numpy_ref as R


def test_fp8_decode_table_matches_ml_dtypes():
    codes = np.arange(256, dtype=np.uint8)
    ours = R.fp8_e4m3_decode(codes)
    theirs = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    ok = ~np.isnan(ours)
    assert np.array_equal(ours[ok], theirs[ok])
    assert np.nanmax(ours) == 448.0 and R.FP8_TABLE[1] == 2.0 ** -9


def test_fp8_encode_matches_ml_dtypes_rounding(rng):
    x = np.concatenate([
        rng.standard_normal(20000) * 50,
        rng.uniform(-448, 448, 20000),
        rng.standard_normal(5000) * 2.0 ** -8,            # subnormals
        R.FP8_TABLE[:0x7F],                               # exact values
        (R.FP8_TABLE[:0x7E] + R.FP8_TABLE[1:0x7F]) / 2,   # exact ties
        -(R.FP8_TABLE[:0x7E] + R.FP8_TABLE[1:0x7F]) / 2,
        [448.0, -448.0, 455.0, 464.0, 0.0],
    ])
    ours = R.fp8_e4m3_encode(x)
    theirs = x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    # ml_dtypes keeps the sign of a value that rounds to zero; so do we
    assert np.array_equal(ours, theirs), np.argwhere(ours != theirs)[:5]
    assert R.fp8_e4m3_encode(np.array([465.0, np.nan]))[0] & 0x7F == 0x7F


def test_scheduler_worked_example():
    """§5.3: P=4, seqlens [100, 1000, 0]."""
    recs, splits = R.ref_schedule([100, 1000, 0], 4)
    assert recs[:, :7].tolist() == [[0, 1, 0, 2, 0, 0, 1], [1, 1, 2, 11, 1, 1, 1],
                                    [1, 1, 11, 16, 2, 1, 1], [2, 2, 0, 0, 0, 0, 0]]
    assert splits.tolist() == [0, 1, 4, 5]
    R.schedule_coverage(recs, splits, [100, 1000, 0])


@pytest.mark.parametrize("P", [1, 2, 3, 7, 16, 40])
def test_scheduler_invariants_random(rng, P):
    for _ in range(20):
        b = int(rng.integers(1, 9))
        n = rng.integers(0, 1500, b)
        n[rng.random(b) < 0.2] = 0
        recs, splits = R.ref_schedule(n, P)
        R.schedule_coverage(recs, splits, n)


def test_v32_token_layout_by_hand():
    k = np.zeros((1, 1, 1, 576), dtype=np.float32)
    k[0, 0, 0, 0] = 448.0        # tile 0: amax 448 -> scale 1
    k[0, 0, 0, 1] = -1.0
    k[0, 0, 0, 128] = 3.0        # tile 1: amax 3 -> s0 = 3/448 -> scale 2^-7
    k[0, 0, 0, 512] = 1.5        # RoPE
    cache = R.quantize_kv(k.astype(R.BF16), R.V32)
    t = cache[0, 0, 0]
    assert t[0] == 0x7E and t[1] == 0xB8            # 448, -1.0
    assert t[128] == R.fp8_e4m3_encode(3.0 * 128)   # 384
    sc = t[512:528].view("<f4")
    assert sc.tolist() == [1.0, 2.0 ** -7, 2.0 ** -13, 2.0 ** -13]
    assert t[528:530].view("<u2")[0] == 0x3FC0      # bf16 1.5
    deq = R.dequantize_kv(cache, R.V32)
    assert deq[0, 0, 0, :2].astype(np.float64).tolist() == [448.0, -1.0]
    assert float(deq[0, 0, 0, 128]) == 3.0 and float(deq[0, 0, 0, 512]) == 1.5


def test_model1_block_layout_by_hand():
    B = 2
    k = np.zeros((1, B, 1, 512), dtype=np.float32)
    k[0, 1, 0, 64] = 1.0          # token 1, tile 1: scale 2^-8 (1/448 -> 2^-8)
    k[0, 1, 0, 448] = -2.0        # token 1 RoPE
    cache = R.quantize_kv(k.astype(R.BF16), R.MODEL1)
    flat = cache[0].reshape(-1)
    assert flat.size == 584 * B
    assert flat[576 + 64] == R.fp8_e4m3_encode(256.0)
    assert flat[576 + 448:576 + 450].view("<u2")[0] == 0xC000   # bf16 -2.0
    scales = flat[576 * B:].reshape(B, 8)
    assert scales[1].tolist() == [127 - 13, 127 - 8, 114, 114, 114, 114, 114, 0]
    assert scales[0].tolist() == [114] * 7 + [0]
    deq = R.dequantize_kv(cache, R.MODEL1)
    assert float(deq[0, 1, 0, 64]) == 1.0 and float(deq[0, 1, 0, 448]) == -2.0


def test_check_is_allclose_rejects():
    a = np.array([1.0, 2.0, np.inf], dtype=np.float32)
    R.check_is_allclose("same", a, a.copy())
    with pytest.raises(AssertionError):
        R.check_is_allclose("inf", a, np.array([1.0, 2.0, 3.0], dtype=np.float32))
    with pytest.raises(AssertionError):
        R.check_is_allclose("value", a, np.array([1.0, 2.1, np.inf], dtype=np.float32))
    with pytest.raises(AssertionError):
        R.check_is_allclose("dtype", a, a.astype(np.float64))


def test_token_slots_reference():
    bt = np.array([[5, 2, 9], [0, 1, 7]], dtype=np.int32)
    pos = np.array([[[0, 63, 64, -1, 130]], [[-1, 1, 65, 128, 2]]])
    got = R.token_slots(bt, pos, 64)
    assert got.tolist() == [[[320, 383, 128, -1, 578]], [[-1, 1, 65, 448, 2]]]
