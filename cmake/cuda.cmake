# The CUDA backend: every src/cuda/**/*.cu compiled by nvcc into the static library flashmla_cuda
# (CMakeLists.txt links it into flashmla with FLASHMLA_WITH_CUDA=1 when this file sets
# FLASHMLA_WITH_CUDA ON).
#
# FLASHMLA_CUDA      AUTO (default): build it when nvcc is found; ON: always (no nvcc is an error);
#                    OFF: never. pip install . passes the FLASHMLA_CUDA environment variable.
# Architectures: sm_80 (the portable SM80 generation: mma.sync, ldmatrix, cp.async), sm_90a
# (Hopper: wgmma/TMA), sm_100a (datacenter Blackwell: tcgen05) and sm_120 (consumer Blackwell),
# those the toolkit supports (nvcc --list-gpu-code); real SASS for each, plus PTX of compute_80
# (JIT-compiled by the driver for any SM80+ GPU without SASS here, e.g. CC 10.3 or 11.0, since
# sm_100a SASS runs on CC 10.0 only) and of the newest one that is not arch-specific
# (compute_120), which later GPUs prefer. ("a" PTX runs on that exact GPU only, so it is no use
# for forward compatibility.)
#
# FlashMLA's build switches, each a CMake option or an environment variable of the same name
# (set to 1/TRUE/ON/YES; either one is enough; the environment is read at configure time):
#   FLASH_MLA_DISABLE_SM90    drops sm_90a
#   FLASH_MLA_DISABLE_SM100   drops sm_100a
#   FLASH_MLA_DISABLE_SM120   drops sm_120 (our own switch: FlashMLA has no sm_120 build; sm_120
#                             has no tcgen05 and 99 KiB of shared memory, so it runs the portable
#                             kernels like sm_80 and does not go with SM100)
#   FLASH_MLA_DISABLE_FP16    defines FLASH_MLA_DISABLE_FP16 for the CUDA sources: the kernels
#                             leave out their fp16 instantiations (bf16 only)
#   NVCC_THREADS              nvcc --threads N: the per-architecture compilations of one file in
#                             parallel. Default: 2 capped at the core count (FlashMLA uses 4); see
#                             FLASHMLA_NVCC_THREADS_DEFAULT below.
# FLASHMLA_CUDA_ARCHITECTURES (advanced) replaces the list above, in CMAKE_CUDA_ARCHITECTURES
# form (e.g. "80-real" for a quick single-architecture build).
#
# Arch-specific code: kernels guard Hopper instructions (wgmma, TMA, setmaxnreg) with
#   #if defined(__CUDA_ARCH_FEAT_SM90_ALL)       (defined only when compiling for sm_90a)
# and Blackwell ones (tcgen05, TMEM) with
#   #if defined(__CUDA_ARCH_FEAT_SM100_ALL)      (sm_100a; __CUDA_ARCH_FAMILY_SPECIFIC__ == 1000
#                                                 also covers the sm_100f family)
# never with __CUDA_ARCH__ >= 900 alone: plain sm_90 (and compute_120's PTX) must not see them,
# and ptxas rejects wgmma on a plain sm_90 target ("not supported on .target 'sm_90'").
#
# ptxas resource report: every file is compiled with --resource-usage through
# scripts/nvcc-capture.sh, which keeps each translation unit's report in <build>/ptxas/<file>.log;
# scripts/check_cuda_resources.py <build> prints every kernel's registers / spills / stack /
# static shared memory per architecture and fails on a spill or on shared memory above the
# architecture's per-block limit.
set(FLASHMLA_CUDA AUTO CACHE STRING "Build the CUDA backend: AUTO (when nvcc is found), ON, OFF")
set_property(CACHE FLASHMLA_CUDA PROPERTY STRINGS AUTO ON OFF)
set(FLASHMLA_WITH_CUDA OFF)

string(TOUPPER "${FLASHMLA_CUDA}" _fmla_cuda_mode)
if(_fmla_cuda_mode MATCHES "^(ON|TRUE|YES|Y|1)$")
  set(_fmla_cuda_mode ON)
elseif(_fmla_cuda_mode MATCHES "^(OFF|FALSE|NO|N|0)$")
  set(_fmla_cuda_mode OFF)
elseif(NOT _fmla_cuda_mode STREQUAL "AUTO")
  message(FATAL_ERROR "FLASHMLA_CUDA must be AUTO, ON or OFF (got '${FLASHMLA_CUDA}')")
endif()
if(_fmla_cuda_mode STREQUAL "OFF")
  message(STATUS "CUDA backend: off (FLASHMLA_CUDA=OFF)")
  return()
endif()

# ---- find nvcc: CMAKE_CUDA_COMPILER or CUDACXX when given, else PATH, else $CUDA_HOME/bin,
# $CUDA_PATH/bin, /usr/local/cuda/bin (handed to check_language through CUDACXX, so the compiler
# found is also checked to work) ----
if(NOT DEFINED CMAKE_CUDA_COMPILER AND "$ENV{CUDACXX}" STREQUAL "")
  find_program(FLASHMLA_NVCC_ON_PATH nvcc NO_CMAKE_PATH NO_CMAKE_ENVIRONMENT_PATH
               NO_CMAKE_SYSTEM_PATH)
  find_program(FLASHMLA_NVCC_IN_TOOLKIT nvcc NO_DEFAULT_PATH
               PATHS "$ENV{CUDA_HOME}/bin" "$ENV{CUDA_PATH}/bin" /usr/local/cuda/bin)
  mark_as_advanced(FLASHMLA_NVCC_ON_PATH FLASHMLA_NVCC_IN_TOOLKIT)
  if(FLASHMLA_NVCC_ON_PATH)
    set(ENV{CUDACXX} "${FLASHMLA_NVCC_ON_PATH}")
  elseif(FLASHMLA_NVCC_IN_TOOLKIT)
    set(ENV{CUDACXX} "${FLASHMLA_NVCC_IN_TOOLKIT}")
  endif()
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(_fmla_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "FLASHMLA_CUDA=ON but no working CUDA compiler (nvcc) was found: put "
                        "nvcc on PATH or set CUDACXX / CMAKE_CUDA_COMPILER")
  endif()
  message(STATUS "CUDA backend: off (no nvcc found; FLASHMLA_CUDA=AUTO)")
  return()
endif()

# ---- the build switches: CMake option or environment variable ----
function(_fmla_switch name doc)
  option(${name} "${doc}" OFF)
  set(value ${${name}})
  if(DEFINED ENV{${name}})
    string(TOUPPER "$ENV{${name}}" env)
    if(env MATCHES "^(1|TRUE|ON|YES|Y)$")
      set(value ON)
    endif()
  endif()
  set(_fmla_${name} ${value} PARENT_SCOPE)
endfunction()
_fmla_switch(FLASH_MLA_DISABLE_SM90 "Do not build the sm_90a (Hopper) kernels")
_fmla_switch(FLASH_MLA_DISABLE_SM100 "Do not build the sm_100a (datacenter Blackwell) kernels")
_fmla_switch(FLASH_MLA_DISABLE_SM120 "Do not build for sm_120 (consumer Blackwell)")
_fmla_switch(FLASH_MLA_DISABLE_FP16 "Leave out the fp16 kernel instantiations (bf16 only)")

# NVCC_THREADS: FlashMLA's default is 4, for build machines with many cores and few files. Here
# `make -j$(nproc)` already runs one compiler per core, so threads beyond the core count only
# oversubscribe; 2 still halves the wall time of a file compiled alone (the last .cu of a build,
# or one edited file), where the other core would idle. So: min(2, cores).
cmake_host_system_information(RESULT _fmla_cores QUERY NUMBER_OF_LOGICAL_CORES)
if(_fmla_cores GREATER_EQUAL 2)
  set(FLASHMLA_NVCC_THREADS_DEFAULT 2)
else()
  set(FLASHMLA_NVCC_THREADS_DEFAULT 1)
endif()
set(NVCC_THREADS "" CACHE STRING
    "nvcc --threads (parallel per-architecture compilation); empty: the NVCC_THREADS environment variable, else min(2, cores)")
if(NOT NVCC_THREADS STREQUAL "")
  set(_fmla_nvcc_threads ${NVCC_THREADS})
elseif(DEFINED ENV{NVCC_THREADS} AND NOT "$ENV{NVCC_THREADS}" STREQUAL "")
  set(_fmla_nvcc_threads $ENV{NVCC_THREADS})
else()
  set(_fmla_nvcc_threads ${FLASHMLA_NVCC_THREADS_DEFAULT})
endif()
if(NOT _fmla_nvcc_threads MATCHES "^[0-9]+$")
  message(FATAL_ERROR "NVCC_THREADS must be a non-negative integer (got '${_fmla_nvcc_threads}')")
endif()

# ---- architectures: the wanted ones the toolkit supports ----
execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --list-gpu-code
                OUTPUT_VARIABLE _fmla_gpu_codes ERROR_QUIET RESULT_VARIABLE _fmla_rc)
if(NOT _fmla_rc EQUAL 0)
  set(_fmla_gpu_codes "")
endif()
set(FLASHMLA_CUDA_ARCHITECTURES "" CACHE STRING
    "Override the CUDA architectures (CMAKE_CUDA_ARCHITECTURES form, e.g. 80-real); empty: the default list")
mark_as_advanced(FLASHMLA_CUDA_ARCHITECTURES)
if(FLASHMLA_CUDA_ARCHITECTURES)
  set(_fmla_archs ${FLASHMLA_CUDA_ARCHITECTURES})
else()
  set(_fmla_wanted 80)
  if(NOT _fmla_FLASH_MLA_DISABLE_SM90)
    list(APPEND _fmla_wanted 90a)
  endif()
  if(NOT _fmla_FLASH_MLA_DISABLE_SM100)
    list(APPEND _fmla_wanted 100a)
  endif()
  if(NOT _fmla_FLASH_MLA_DISABLE_SM120)
    list(APPEND _fmla_wanted 120)
  endif()
  set(_fmla_archs "")
  set(_fmla_ptx "")  # the newest supported architecture that is not arch-specific
  foreach(arch ${_fmla_wanted})
    string(REGEX REPLACE "a$" "" base ${arch})
    if(_fmla_gpu_codes MATCHES "sm_${base}([^0-9]|$)")
      list(APPEND _fmla_archs ${arch}-real)
      if(arch STREQUAL base)
        set(_fmla_ptx ${arch})
      endif()
    else()
      message(STATUS "CUDA backend: nvcc ${CMAKE_CUDA_COMPILER_VERSION} cannot build sm_${arch}, left out")
    endif()
  endforeach()
  # PTX: compute_80, which the driver JIT-compiles for every GPU from SM80 on that has no SASS
  # here (sm_100a SASS runs on CC 10.0 only: B300 at 10.3 or Thor need it), plus the newest
  # plain architecture's, which later GPUs prefer.
  if(_fmla_archs MATCHES "(^|;)80-real")
    list(APPEND _fmla_archs 80-virtual)
  endif()
  if(_fmla_ptx AND NOT _fmla_ptx STREQUAL "80")
    list(APPEND _fmla_archs ${_fmla_ptx}-virtual)
  endif()
endif()
if(NOT _fmla_archs)
  if(_fmla_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "FLASHMLA_CUDA=ON but no CUDA architecture is left to build")
  endif()
  message(STATUS "CUDA backend: off (no architecture left to build)")
  return()
endif()

# ---- the library ----
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
# CMake < 3.26 does not know nvcc's -std=c++20 (nvcc has it since 12.0).
if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
endif()
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_EXTENSIONS OFF)

file(GLOB_RECURSE FLASHMLA_CUDA_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/cuda/*.cu)
if(NOT FLASHMLA_CUDA_SOURCES)
  message(STATUS "CUDA backend: off (no src/cuda/**/*.cu yet)")
  return()
endif()
add_library(flashmla_cuda STATIC ${FLASHMLA_CUDA_SOURCES})
# Only what is set here: the directory's host compile options (e.g. -fsanitize= from
# FLASHMLA_SANITIZE) are not nvcc options.
set_property(TARGET flashmla_cuda PROPERTY COMPILE_OPTIONS "")
# nvcc's --generate-code flags written here rather than through CUDA_ARCHITECTURES: CMake
# versions before 3.24-ish reject the "a" suffix (90a) there, and this project supports 3.22.
set(_fmla_gencode "")
foreach(entry ${_fmla_archs})
  if(NOT entry MATCHES "^([0-9]+[af]?)(-real|-virtual)?$")
    message(FATAL_ERROR "CUDA architecture '${entry}' is not of the form NN[a|f][-real|-virtual]")
  endif()
  set(arch ${CMAKE_MATCH_1})
  if(NOT CMAKE_MATCH_2 STREQUAL "-virtual")
    list(APPEND _fmla_gencode "--generate-code=arch=compute_${arch},code=[sm_${arch}]")
  endif()
  if(NOT CMAKE_MATCH_2 STREQUAL "-real")
    list(APPEND _fmla_gencode "--generate-code=arch=compute_${arch},code=[compute_${arch}]")
  endif()
endforeach()
set_target_properties(flashmla_cuda PROPERTIES
  CUDA_ARCHITECTURES OFF
  CUDA_SEPARABLE_COMPILATION OFF
  POSITION_INDEPENDENT_CODE ON)
target_compile_options(flashmla_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:${_fmla_gencode}>)
target_include_directories(flashmla_cuda PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include)
target_compile_options(flashmla_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--resource-usage>
  $<$<COMPILE_LANGUAGE:CUDA>:--threads=${_fmla_nvcc_threads}>)
if(_fmla_FLASH_MLA_DISABLE_FP16)
  target_compile_definitions(flashmla_cuda PRIVATE FLASH_MLA_DISABLE_FP16)
endif()
# The host side may select the SM90 (wgmma) and SM100 (tcgen05) kernels only when their
# sm_90a / sm_100a code is built.
if(_fmla_archs MATCHES "(^|;)90a(-real)?(;|$)")
  target_compile_definitions(flashmla_cuda PRIVATE FLASHMLA_CUDA_SM90A)
endif()
if(_fmla_archs MATCHES "(^|;)100a(-real)?(;|$)")
  target_compile_definitions(flashmla_cuda PRIVATE FLASHMLA_CUDA_SM100A)
endif()
# The CUDA runtime: static by default (CMAKE_CUDA_RUNTIME_LIBRARY, CMake's own default), so the
# test binaries and the Python module need no libcudart.so at run time; Shared links libcudart.so.
if(CMAKE_CUDA_RUNTIME_LIBRARY MATCHES "^[Ss]hared$")
  set(FLASHMLA_CUDART_TARGET CUDA::cudart)
else()
  set(FLASHMLA_CUDART_TARGET CUDA::cudart_static)
endif()
target_link_libraries(flashmla_cuda PUBLIC ${FLASHMLA_CUDART_TARGET})

# The ptxas report of every translation unit, kept in <build>/ptxas/ (scripts/nvcc-capture.sh).
set(FLASHMLA_PTXAS_LOG_DIR ${CMAKE_BINARY_DIR}/ptxas)
set_property(TARGET flashmla_cuda PROPERTY CUDA_COMPILER_LAUNCHER
             ${PROJECT_SOURCE_DIR}/scripts/nvcc-capture.sh ${FLASHMLA_PTXAS_LOG_DIR}
             ${PROJECT_SOURCE_DIR}/src/cuda ${CMAKE_CUDA_COMPILER_LAUNCHER})
# The architectures this build compiles for, for the checker (each log must cover each one).
set(_fmla_arch_names ${_fmla_archs})
list(FILTER _fmla_arch_names EXCLUDE REGEX "-virtual$")  # PTX only: ptxas does not run
list(TRANSFORM _fmla_arch_names REPLACE "-real$" "")
list(REMOVE_DUPLICATES _fmla_arch_names)
list(TRANSFORM _fmla_arch_names PREPEND sm_)
string(REPLACE ";" "\n" _fmla_arch_lines "${_fmla_arch_names}")
file(WRITE ${FLASHMLA_PTXAS_LOG_DIR}/architectures.txt "${_fmla_arch_lines}\n")

# make test (ctest) checks the reports and the arch guards (add_test is recorded here and
# written out by the enable_testing() of the FLASHMLA_BUILD_TESTS section of CMakeLists.txt).
if(FLASHMLA_BUILD_TESTS)
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
  add_test(NAME cuda.ptxas_resources
           COMMAND Python3::Interpreter ${PROJECT_SOURCE_DIR}/scripts/check_cuda_resources.py
                   ${CMAKE_BINARY_DIR})
  add_test(NAME cuda.arch_guards
           COMMAND bash ${PROJECT_SOURCE_DIR}/scripts/check_cuda_arch_guards.sh
                   ${CMAKE_CUDA_COMPILER} 1)
  set_tests_properties(cuda.ptxas_resources cuda.arch_guards PROPERTIES TIMEOUT 600)
endif()

set(FLASHMLA_WITH_CUDA ON)
set(_fmla_note "")
if(_fmla_FLASH_MLA_DISABLE_FP16)
  set(_fmla_note ", bf16 only (FLASH_MLA_DISABLE_FP16)")
endif()
message(STATUS "CUDA backend: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${_fmla_archs}, "
               "--threads ${_fmla_nvcc_threads}${_fmla_note}")
