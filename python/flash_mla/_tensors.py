"""Array plumbing between torch / NumPy and ``flash_mla._C``.

Inputs become ``_C.TensorView`` objects without a copy; outputs are allocated in the framework
of a reference input (torch tensors on its device, or NumPy arrays). torch is never imported
here: an object can only be a torch tensor if torch is already loaded.
"""
import contextlib
import operator
import sys

import numpy as np

from . import _C

# ---------------------------------------------------------------------------------------------
# Thread setting, passed to every operation as a _C.Context.

_num_threads = 0


def set_num_threads(n: int) -> None:
    """Set the CPU worker threads used by every flash_mla call; 0 restores the default
    (``FLASHMLA_NUM_THREADS``, else OpenMP's). Also the number of scheduler parts of
    schedules computed from now on."""
    global _num_threads
    ctx = _C.Context()
    ctx.num_threads = to_int(n, "set_num_threads", "n")
    shape = _C.MlaDecodeShape()
    shape.batch = shape.num_heads_q = 1
    try:
        _C.mla_num_sm_parts(shape, ctx)  # the C++ range check
    except ValueError as e:
        raise ValueError("set_num_threads: argument 'n': " + str(e).split(": ", 2)[-1]) from None
    _num_threads = ctx.num_threads


def get_num_threads() -> int:
    """The number of CPU worker threads a flash_mla call uses now."""
    return _C.resolved_num_threads(context())


def context(like=None):
    """A fresh ``_C.Context`` carrying the module's thread setting and, when ``like`` is a CUDA
    torch tensor, torch's current stream on its device (the C++ call queues its work there)."""
    ctx = _C.Context()
    ctx.num_threads = _num_threads
    if is_cuda(like):
        ctx.cuda_stream = _torch().cuda.current_stream(like.device).cuda_stream
    return ctx


def is_cuda(x) -> bool:
    """A torch tensor on a CUDA device."""
    return is_torch(x) and x.is_cuda


def device_of(x):
    """The ``_C.Device`` a call whose leading argument is ``x`` runs on."""
    return _C.Device.cuda if is_cuda(x) else _C.Device.cpu


def on_device(x):
    """A context manager making ``x``'s CUDA device current (the C++ library runs on the current
    device), or doing nothing for other arrays."""
    return _torch().cuda.device(x.device) if is_cuda(x) else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Framework detection and allocation.

def _torch():
    return sys.modules.get("torch")


def is_torch(x) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def is_array(x) -> bool:
    """A torch tensor, a NumPy array, or another DLPack / array-interface object."""
    return (is_torch(x) or isinstance(x, np.ndarray) or hasattr(x, "__dlpack__")
            or hasattr(x, "__array_interface__"))


def shape_of(x, fn: str, name: str, n: int):
    """The first ``n`` sizes of ``x`` (missing ones as 1, for output allocation only: the C++
    call then reports the wrong rank of ``x``)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{fn}: argument '{name}': expected a torch tensor or NumPy array, "
                        f"got {type(x).__name__}")
    s = tuple(int(d) for d in shape)
    return (s + (1,) * n)[:n]


_DTYPES = {"fp32": ("float32", np.float32), "int32": ("int32", np.int32),
           "uint8": ("uint8", np.uint8)}


def _numpy_dtype(dtype):
    if dtype == "bf16":
        try:
            import ml_dtypes
        except ImportError as e:  # pragma: no cover
            raise ImportError("flash_mla: bf16 NumPy arrays need the ml_dtypes package") from e
        return ml_dtypes.bfloat16
    return _DTYPES[dtype][1]


def empty(like, shape, dtype=None):
    """An uninitialised contiguous array in the framework (and device) of ``like``. ``dtype``:
    None (``like``'s), "fp32", "int32", "uint8" or "bf16"."""
    if is_torch(like):
        torch = _torch()
        if dtype is None:
            td = like.dtype
        elif dtype == "bf16":
            td = torch.bfloat16
        else:
            td = getattr(torch, _DTYPES[dtype][0])
        return torch.empty(tuple(shape), dtype=td, device=like.device)
    nd = getattr(like, "dtype", None) if dtype is None else _numpy_dtype(dtype)
    return np.empty(tuple(shape), dtype=nd)


def swap(x, a: int, b: int):
    """``x`` with dimensions ``a`` and ``b`` exchanged (a view)."""
    return x.transpose(a, b) if is_torch(x) else np.swapaxes(x, a, b)


def to_int(x, fn: str, name: str) -> int:
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{fn}: argument '{name}': expected an int, got "
                        f"{type(x).__name__}") from None


def to_float(x, fn: str, name: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: argument '{name}': expected a float, got "
                        f"{type(x).__name__}") from None


# ---------------------------------------------------------------------------------------------
# Views.

def view(x, fn: str, name: str):
    """A ``_C.TensorView`` onto ``x`` (no copy) for argument ``name`` of ``fn``. The caller keeps
    ``x`` alive until the C++ call returns. NumPy bfloat16 / float8_e4m3fn (ml_dtypes) and torch
    float8_e4m3fn arrays are reinterpreted; other dtypes go as they are (int8 reads as uint8)."""
    arr, dtype = x, None
    if is_torch(x):
        torch = _torch()
        if x.requires_grad:
            arr = x.detach()
        f8 = getattr(torch, "float8_e4m3fn", None)
        if f8 is not None and x.dtype == f8:
            arr, dtype = arr.view(torch.uint8), "fp8_e4m3"
    elif isinstance(x, np.ndarray):
        kind = x.dtype.name
        if kind == "bfloat16":
            arr, dtype = x.view(np.uint16), "bf16"
        elif kind == "float8_e4m3fn":
            arr, dtype = x.view(np.uint8), "fp8_e4m3"
    try:
        return _C.view(arr, dtype)
    except (TypeError, ValueError, BufferError, RuntimeError) as e:
        msg = str(e)
        if not msg.startswith("flash_mla._C.view: "):  # nanobind could not take it
            got = type(x).__name__
            if hasattr(x, "dtype"):
                where = f" on {x.device}" if is_torch(x) else ""
                got += f" of dtype {x.dtype}{where}"
            raise TypeError(f"{fn}: argument '{name}': expected a torch tensor or NumPy array "
                            f"(dtype bf16, fp16, fp32, float8_e4m3fn, int32, uint8 or int8), "
                            f"got {got}") from None
        if "argument 'dtype'" in msg:
            raise TypeError(f"{fn}: argument '{name}': expected dtype bf16, fp16, fp32, "
                            f"float8_e4m3fn, int32, uint8 or int8, got "
                            f"{getattr(x, 'dtype', '?')}") from None
        detail = msg.split(": ", 2)[-1]  # "expected ..., got ..."
        raise type(e)(f"{fn}: argument '{name}': {detail}") from None


def set_views(args, fn: str, **arrays) -> None:
    """``args.<name> = view(array)`` for every array that is not None (None leaves the field a
    null TensorView, i.e. an absent optional argument)."""
    for name, x in arrays.items():
        if x is not None:
            setattr(args, name, view(x, fn, name))
