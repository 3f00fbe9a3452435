// The host side of a TMA tensor map (cuda/common/tma.cuh): encoded by the driver's
// cuTensorMapEncodeTiled on the GPU build, by the harness's equivalent (which checks the
// driver's documented rules) under FLASHMLA_CUDA_HARNESS.
#pragma once

#include <cstdint>
#include <string>

#include "cuda/common/tma.cuh"

FMLA_CUDA_NS_BEGIN

// A tiled map of 16-bit elements (bf16 / fp16: the copy moves bytes) with 128-byte swizzling:
// `rank` dimensions, dims[0] the contiguous one, strides_bytes[d] the byte stride of dimension
// d + 1, box the elements each copy moves per dimension; out-of-bounds elements read as zero.
// Returns an empty string, or why no map could be made (the caller then uses a kernel that
// does not need one).
std::string encode_tma_map_16bit(TmaMap* map, int rank, const void* base, const uint64_t* dims,
                                 const uint64_t* strides_bytes, const uint32_t* box);

FMLA_CUDA_NS_END
