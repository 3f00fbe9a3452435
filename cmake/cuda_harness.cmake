# flashmla_cuda_harness: the CPU harness (tests/cuda_harness) plus every CUDA source of src/cuda
# compiled by the host compiler with FLASHMLA_CUDA_HARNESS, so tests run the kernels' own code
# on the CPU. Needs the CUDA toolkit's headers (cuda_bf16.h, cuda_fp16.h) and Boost.Context.
find_path(FLASHMLA_CUDA_INCLUDE_DIR cuda_bf16.h
          HINTS ${CUDAToolkit_INCLUDE_DIRS} $ENV{CUDA_HOME}/include /usr/local/cuda/include
                /usr/include)
find_package(Boost CONFIG COMPONENTS context)
if(NOT FLASHMLA_CUDA_INCLUDE_DIR OR NOT Boost_FOUND)
  message(WARNING "CUDA harness not built: it needs cuda_bf16.h (CUDA toolkit) and "
                  "Boost.Context (libboost-context-dev); scripts/install-deps.sh installs them")
  set(FLASHMLA_CUDA_HARNESS OFF)
  return()
endif()
set(FLASHMLA_CUDA_HARNESS ON)

# One wrapper per kernel source, so the same .cu is compiled as C++ here and by nvcc for the
# library without per-target source properties.
file(GLOB_RECURSE FLASHMLA_CUDA_KERNEL_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/cuda/*.cu)
set(FLASHMLA_HARNESS_WRAPPERS "")
foreach(cu ${FLASHMLA_CUDA_KERNEL_SOURCES})
  file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR}/src/cuda ${cu})
  string(REPLACE "/" "__" stem ${rel})
  set(wrapper ${CMAKE_CURRENT_BINARY_DIR}/cuda_harness_src/${stem}.cpp)
  file(CONFIGURE OUTPUT ${wrapper} CONTENT "#include \"${cu}\"\n")
  list(APPEND FLASHMLA_HARNESS_WRAPPERS ${wrapper})
endforeach()
file(GLOB FLASHMLA_HARNESS_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/cuda_harness/*.cpp)
add_library(flashmla_cuda_harness STATIC ${FLASHMLA_HARNESS_SOURCES} ${FLASHMLA_HARNESS_WRAPPERS})
target_compile_definitions(flashmla_cuda_harness PUBLIC FLASHMLA_CUDA_HARNESS=1)
target_include_directories(flashmla_cuda_harness PUBLIC ${PROJECT_SOURCE_DIR}/tests
                           ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include)
target_include_directories(flashmla_cuda_harness SYSTEM PUBLIC ${FLASHMLA_CUDA_INCLUDE_DIR})
# Kernels reinterpret registers and shared memory freely, as CUDA code does.
target_compile_options(flashmla_cuda_harness PUBLIC -fno-strict-aliasing)
target_link_libraries(flashmla_cuda_harness PUBLIC Boost::context OpenMP::OpenMP_CXX flashmla)
