# The CUDA backend: every src/cuda/**/*.cu compiled by nvcc into flashmla_cuda (linked into
# flashmla), for the architectures FlashMLA builds, when nvcc is found (FLASHMLA_CUDA=AUTO) or
# always (ON; a missing nvcc is then an error). Placeholder until the backend lands.
set(FLASHMLA_CUDA AUTO CACHE STRING "Build the CUDA backend: AUTO (when nvcc is found), ON, OFF")
set(FLASHMLA_WITH_CUDA OFF)
