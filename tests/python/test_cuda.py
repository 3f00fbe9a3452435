"""CUDA tensors through the Python package. On any machine: the plumbing (the stream carried by
the context, the device a schedule is computed for, clean errors where no GPU answers). On a
machine with a GPU (torch.cuda) and a CUDA build: every MLA operation on CUDA tensors against the
same call on CPU tensors (the CPU path is itself checked against the reference elsewhere); the
test names say which of those need the GPU."""
import numpy as np
import pytest
import torch

import flash_mla as fm
from flash_mla import _C
from flash_mla import _tensors as T
from helpers import BACKENDS, make_dense_case, make_sink, make_sparse_pool
import numpy_ref as R
from test_sparse import make_prefill_case, q_for, sparse_decode

GPU = torch.cuda.is_available() and _C.has_cuda_backend()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and a CUDA build of flash_mla")
TORCH = BACKENDS["torch"]


def test_context_carries_the_stream():
    ctx = _C.Context()
    assert ctx.cuda_stream == 0
    ctx.cuda_stream = 0x7F00_1234
    assert ctx.cuda_stream == 0x7F00_1234
    assert T.context(np.zeros(3)).cuda_stream == 0  # CPU arrays: the default stream
    assert T.context(torch.zeros(3)).cuda_stream == 0
    assert T.device_of(torch.zeros(3)) == _C.Device.cpu


def test_has_cuda_backend_is_a_bool():
    assert isinstance(_C.has_cuda_backend(), bool)


def test_cuda_sm_parts_without_a_gpu_is_a_clean_error():
    """The CUDA scheduler's part count asks the current device; with no GPU (or no CUDA build)
    that is a RuntimeError naming what failed, never a crash."""
    if GPU:
        pytest.skip("a GPU answers here; test_gpu_* cover this machine")
    shape = _C.MlaDecodeShape()
    shape.batch, shape.q_len, shape.num_heads_q, shape.num_heads_kv = 2, 1, 16, 1
    with pytest.raises(RuntimeError, match=r"mla_num_sm_parts|CUDA"):
        _C.mla_num_sm_parts(shape, _C.Context(), _C.Device.cuda)
    assert _C.mla_num_sm_parts(shape, _C.Context(), _C.Device.cpu) >= 1


def cuda(x):
    return TORCH.arr(x).cuda() if isinstance(x, np.ndarray) else x.cuda()


@pytest.fixture(params=["auto", "portable"])
def kernels(request, monkeypatch):
    """Each GPU attention test twice: with the kernels the library picks for this GPU (the
    Hopper ones on compute capability 9.0) and with FLASHMLA_CUDA_PORTABLE=1 (the portable ones;
    read per call)."""
    if request.param == "portable":
        monkeypatch.setenv("FLASHMLA_CUDA_PORTABLE", "1")
    else:
        monkeypatch.delenv("FLASHMLA_CUDA_PORTABLE", raising=False)
    return request.param


def close(a, b, atol, rtol):
    a, b = a.float().cpu(), b.float().cpu()
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol, equal_nan=True)


@needs_gpu
@pytest.mark.parametrize("b,s_q,h_q,h_kv,s_k,causal", [(2, 1, 16, 1, 300, False),
                                                       (3, 2, 64, 1, 1000, True),
                                                       (2, 1, 32, 2, 200, False)])
def test_gpu_dense_decode_matches_cpu(kernels, rng, b, s_q, h_q, h_kv, s_k, causal):
    q, k, bt, sl = make_dense_case(rng, b, s_q, h_q, h_kv, s_k)
    cpu = [TORCH.arr(x) for x in (q, k, bt, sl)]
    gpu = [cuda(x) for x in cpu]
    want = fm.flash_mla_with_kvcache(*cpu, 512, fm.get_mla_metadata()[0], causal=causal)
    sched, _ = fm.get_mla_metadata()
    for _ in range(2):  # the second call reuses the schedule computed on the device
        got = fm.flash_mla_with_kvcache(*gpu, 512, sched, causal=causal)
        assert got[0].is_cuda and sched.tile_scheduler_metadata.is_cuda
        close(got[0], want[0], 8e-4, 2.01 / 128)
        close(got[1], want[1], 1e-6, 8.01 / 65536)
    legacy = fm.get_mla_metadata(gpu[3], s_q * h_q // h_kv, h_kv)
    got = fm.flash_mla_with_kvcache(*gpu, 512, *legacy, causal=causal)
    close(got[0], want[0], 8e-4, 2.01 / 128)


class CudaTorch:
    """helpers' torch backend with every array moved to the GPU."""
    name = "torch-cuda"

    def arr(self, a, dtype=None):
        return TORCH.arr(a, dtype).cuda()

    def native(self, x):
        return isinstance(x, torch.Tensor) and x.is_cuda


@needs_gpu
@pytest.mark.parametrize("fmt", [R.V32, R.MODEL1])
def test_gpu_sparse_decode_matches_cpu(kernels, rng, fmt):
    b, s_q, h_q, topk = 2, 1, 64, 256
    pool = make_sparse_pool(rng, b, s_q, 600, topk, 64, fmt, with_length=True)
    q = q_for(rng, b, s_q, h_q, pool["deq_flat"].shape[1])
    sink = make_sink(rng, h_q)
    want = sparse_decode(fm, TORCH, q, pool, 0.1, sink=sink)
    got = sparse_decode(fm, CudaTorch(), q, pool, 0.1, sink=sink)
    assert got[0].is_cuda
    close(got[0], want[0], 8e-4, 2.01 / 128)
    close(got[1], want[1], 1e-6, 8.01 / 65536)


@needs_gpu
def test_gpu_sparse_prefill_matches_cpu(kernels, rng):
    q, kv, idx, length = make_prefill_case(rng, 12, 64, 576, 300, 128, True)
    cpu = [TORCH.arr(x) for x in (q, kv, idx)]
    want = fm.flash_mla_sparse_fwd(*cpu, 0.5, topk_length=TORCH.arr(length))
    got = fm.flash_mla_sparse_fwd(*[c.cuda() for c in cpu], 0.5,
                                  topk_length=TORCH.arr(length).cuda())
    for g, w in zip(got, want):
        assert g.is_cuda
        close(g, w, 8e-4, 2.01 / 128)


@needs_gpu
def test_gpu_mha_is_cpu_only():
    q = torch.zeros((4, 2, 64), dtype=torch.bfloat16, device="cuda")
    cu = torch.tensor([0, 4], dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match="has no CUDA kernel"):
        fm.flash_attn_varlen_func(q, q, q, cu, cu, 4, 4)
