// Benchmark case families. Each add_* registers one Google Benchmark case (two for MHA: forward
// and backward) named "<operation>.<name>"; the data is generated lazily, on the case's first
// run, with the tests' case generators (random data, NaN in every slot a kernel must not read).
#pragma once

#include <string>

#include "testing/decode_case.h"
#include "testing/mha_case.h"
#include "testing/prefill_case.h"
#include "testing/sparse_decode_case.h"

namespace flashmla::bench {

// dense_decode.<name>: flash_mla_with_kvcache over a paged cache (with `fp8`: the case's cache
// quantized to FP8 V32), schedule computed once.
void add_dense_decode(const std::string& name, const testing::DenseDecodeCase& c,
                      bool fp8 = false);
// sparse_decode.<name>: flash_mla_with_kvcache with indices, schedule computed once.
void add_sparse_decode(const std::string& name, const testing::SparseDecodeCase& c);
// sparse_prefill.<name>: flash_mla_sparse_fwd.
void add_sparse_prefill(const std::string& name, const testing::SparsePrefillCase& c);
// mha_fwd.<name> and mha_bwd.<name>: flash_attn_varlen_fwd / _bwd on the same data.
void add_mha(const std::string& name, const testing::MhaCase& c);

// Machine limits, measured in the same process: peak.dram_read_<size> (multi-threaded
// streaming read of a buffer much larger than the LLC) and peak.matrix_qk_m<m>_d<d> (the
// active microkernel's qk on L1-resident packed operands, every thread).
void add_peaks();
// peak.insn_*: the instruction peak of the products' arithmetic (register-resident FMA /
// VDPBF16PS loops, bench_insn_peaks.cpp), where the process's ISA level has the instruction.
void add_insn_peaks();

}  // namespace flashmla::bench
