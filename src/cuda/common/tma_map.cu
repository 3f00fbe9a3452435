// cuTensorMapEncodeTiled for the TMA kernels (cuda/common/tma_map.h). The driver function is
// found through the runtime (cudaGetDriverEntryPointByVersion), so the library links no
// libcuda.so.
#include "cuda/common/tma_map.h"

#if defined(__CUDACC__)
#include <cudaTypedefs.h>
#endif

FMLA_CUDA_NS_BEGIN

std::string encode_tma_map_16bit(TmaMap* map, int rank, const void* base, const uint64_t* dims,
                                 const uint64_t* strides_bytes, const uint32_t* box) {
  if (rank < 1 || rank > 5) return "a tensor rank outside 1..5";
#if defined(__CUDACC__)
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    const cudaError_t status = cudaGetDriverEntryPointByVersion(
        "cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found);
#else  // (ByVersion came with CUDA 12.5; 13 deprecates the unversioned call)
    const cudaError_t status =
        cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found);
#endif
    if (status != cudaSuccess || found != cudaDriverEntryPointSuccess) fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (!encode) return "no cuTensorMapEncodeTiled in the driver";
  cuuint64_t d[5], s[4];
  cuuint32_t b[5], element_strides[5] = {1, 1, 1, 1, 1};
  for (int i = 0; i < rank; ++i) {
    d[i] = dims[i];
    b[i] = box[i];
    if (i + 1 < rank) s[i] = strides_bytes[i];
  }
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, static_cast<cuuint32_t>(rank),
                            const_cast<void*>(base), d, s, b, element_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return "cuTensorMapEncodeTiled returned " + std::to_string(int(r));
  return {};
#else
  return ::flashmla::cuda_harness::encode_tensor_map(map, 2, rank, base, dims, strides_bytes, box,
                                                     128);
#endif
}

FMLA_CUDA_NS_END
