"""flash_mla: DeepSeek FlashMLA's Python API (1.0.0) on the flashmla C++ library, CPU backend.

Functions take torch tensors or NumPy arrays (bf16 as ``ml_dtypes.bfloat16``) and return the
same kind. ``FlashMLASchedMeta`` lives in ``flash_mla.flash_mla_interface``, as in FlashMLA.
Beyond FlashMLA: ``flash_attn_varlen_backward`` (backward without autograd), the FP8 cache
helpers ``quantize_kv_cache`` / ``dequantize_kv_cache`` / ``token_slots``, and
``set_num_threads`` / ``get_num_threads``.
"""
__version__ = "1.0.0"

from flash_mla.flash_mla_interface import (
    get_mla_metadata,
    flash_mla_with_kvcache,
    flash_attn_varlen_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_varlen_kvpacked_func,
    flash_mla_sparse_fwd,
    flash_attn_varlen_backward,  # noqa: F401  (beyond FlashMLA; not in __all__)
)
from flash_mla.kvcache import quantize_kv_cache, dequantize_kv_cache, token_slots  # noqa: F401
from flash_mla._tensors import set_num_threads, get_num_threads  # noqa: F401

__all__ = [
    "get_mla_metadata",
    "flash_mla_with_kvcache",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_mla_sparse_fwd",
]
