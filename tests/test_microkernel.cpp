// Every AttnMicrokernel available on this machine (portable everywhere; AVX2/FMA, AVX-512,
// AVX512-BF16 and AMX where CPUID has them; the AMX kernel on the tile emulation wherever
// AVX512-BF16 is) against plain double-precision products on random data: packing of
// bf16 / fp16 / fp32 rows and tokens, qk (with its scale), pv and pt (accumulating with +=), the
// optional token-major qk_tokens on unpacked bf16 tokens, the zero-filled token slots
// n..kKvTile-1, exact conversion of every 16-bit pattern, and the p == 0
// rule that keeps a non-finite value with probability 0 out of the output. The packed layouts
// are private to each microkernel, so packing is only observed through the products.
//
// Error model. The fp32 kernels multiply the given values; the bf16 kernel multiplies them
// rounded to bf16 (and P rounded to bf16 in pv / pt), exactly (the AMX kernel likewise), so its double reference is
// computed on the rounded values (`op` below). Both accumulate in fp32, so the tolerance is the
// same fp32 accumulation bound (terms + 4) * 2^-24 * sum |terms| for every kernel.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/common/half.h"
#include "cpu/common/isa.h"
#include "cpu/common/microkernel.h"

namespace flashmla::cpu {

const AttnMicrokernel& avx512_microkernel();

namespace {

constexpr double kU = 0x1p-24;  // fp32 unit roundoff
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool has_avx512bf16() { return has_avx512() && __builtin_cpu_supports("avx512bf16"); }

// x as the bf16 kernel uses it: rounded to bf16 (nearest even); subnormal fp32 / bf16 values are
// treated as signed zero (VCVTNEPS2BF16 and VDPBF16PS flush subnormal inputs; a normal fp32
// value never rounds to a subnormal bf16).
float round_bf16(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) return std::copysign(0.0f, x);
  return bf16_to_float(float_to_bf16(x));
}

const char* dtype_str(DType dt) {
  return dt == DType::bf16 ? "bf16" : dt == DType::fp16 ? "fp16" : "fp32";
}

// `count` rows of d elements of `dt`, at shuffled slots of a pool whose row stride leaves 8
// NaN-filled elements after each row (never to be read), with their values as floats.
struct Rows {
  DType dt;
  int d;
  std::vector<unsigned char> pool;
  std::vector<const void*> ptr;
  std::vector<float> val;  // count x d

  float at(int r, int c) const { return val[static_cast<size_t>(r) * d + c]; }
};

Rows make_rows(std::mt19937& rng, DType dt, int count, int d,
               const std::vector<uint32_t>* bits = nullptr) {
  Rows rows{dt, d, {}, {}, {}};
  const size_t es = dtype_size(dt), stride = static_cast<size_t>(d + 8) * es;
  rows.pool.assign(std::max<size_t>(1, count * stride), 0xff);  // all ones: NaN in every dtype
  std::vector<int> slot(count);
  std::iota(slot.begin(), slot.end(), 0);
  std::shuffle(slot.begin(), slot.end(), rng);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (int r = 0; r < count; ++r) {
    unsigned char* row = rows.pool.data() + slot[r] * stride;
    rows.ptr.push_back(row);
    for (int c = 0; c < d; ++c) {
      const size_t e = static_cast<size_t>(r) * d + c;
      const bool given = bits && e < bits->size();
      const float f = uni(rng);
      if (dt == DType::bf16) {
        const uint16_t h = given ? static_cast<uint16_t>((*bits)[e]) : float_to_bf16(f);
        std::memcpy(row + 2 * c, &h, 2);
        rows.val.push_back(bf16_to_float(h));
      } else if (dt == DType::fp16) {
        const uint16_t h = given ? static_cast<uint16_t>((*bits)[e]) : float_to_fp16(f);
        std::memcpy(row + 2 * c, &h, 2);
        rows.val.push_back(fp16_to_float(h));
      } else {
        const float x = given ? std::bit_cast<float>((*bits)[e]) : f;
        std::memcpy(row + 4 * c, &x, 4);
        rows.val.push_back(x);
      }
    }
  }
  return rows;
}

// A packing buffer filled with NaN bytes, at a random 4-byte aligned offset of its allocation
// (the drivers only promise the allocator's alignment).
struct Buffer {
  std::vector<unsigned char> mem;
  void* p;
  Buffer(size_t bytes, std::mt19937& rng)
      : mem(bytes + 64, 0xff), p(mem.data() + 4 * (rng() % 16)) {}
};

// Counts mismatches and reports the first few of each check.
struct Checker {
  std::string what;
  int failures = 0;
  double worst = 0;  // largest |err| / tol seen

  void close(double got, double ref, double tol, int a, int b) {
    const double err = std::fabs(got - ref);
    if (std::isfinite(err) && tol > 0) worst = std::max(worst, err / tol);
    if (!(err <= tol) && failures++ < 5) {
      ADD_FAILURE() << what << " [" << a << "][" << b << "]: got " << got << ", want " << ref
                    << " (tolerance " << tol << ")";
    }
  }
  // Bitwise equal floats, or both NaN (-0 and +0 are equal).
  void same(float got, float want, int a, int b) {
    if (!(got == want || (std::isnan(got) && std::isnan(want))) && failures++ < 5) {
      ADD_FAILURE() << what << " [" << a << "][" << b << "]: got " << got << ", want " << want;
    }
  }
};

// Outputs carry kGuard canaries after their last element: nothing may be written there.
constexpr int kGuard = 16;
constexpr float kCanary = 12345.0f;

void expect_guard(Checker& ck, const std::vector<float>& out) {
  for (int g = 0; g < kGuard; ++g) ck.same(out[out.size() - kGuard + g], kCanary, -1, g);
}

std::string ctx(const char* op, DType dt, int m, int n, int d) {
  std::ostringstream os;
  os << op << " " << dtype_str(dt) << " m=" << m << " n=" << n << " d=" << d;
  return os.str();
}

// Probabilities in [0, 1) with about a quarter exact zeros for j < n, `beyond` for j >= n.
std::vector<float> make_p(std::mt19937& rng, int m, int n, float beyond) {
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  std::vector<float> p(static_cast<size_t>(m) * kKvTile);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < kKvTile; ++j) {
      const float x = uni(rng);
      p[static_cast<size_t>(i) * kKvTile + j] = j >= n ? beyond : x < 0.25f ? 0.0f : x;
    }
  }
  return p;
}

constexpr int kMs[] = {1, 3, 4, 5, 64, 128};
constexpr int kNs[] = {1, 17, 63, 64};
constexpr int kDs[] = {8, 24, 33, 72, 128, 192, 256, 512, 576};  // 33: odd, unaligned
constexpr DType kTypes[] = {DType::bf16, DType::fp16, DType::fp32};

class Microkernel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "avx2") {
      if (!has_avx2()) GTEST_SKIP() << "no AVX2 + FMA on this CPU";
      mk_ = &avx2_microkernel();
    } else if (GetParam() == "avx512") {
      if (!has_avx512()) GTEST_SKIP() << "no AVX-512F/BW/VL/DQ on this CPU";
      mk_ = &avx512_microkernel();
    } else if (GetParam() == "avx512bf16") {
      if (!has_avx512bf16()) GTEST_SKIP() << "no AVX-512F/BW/VL/DQ + AVX512_BF16 on this CPU";
      mk_ = &avx512bf16_microkernel();
      bf16_ = true;
    } else if (GetParam() == "amx_emulated") {
      if (!has_avx512bf16()) GTEST_SKIP() << "no AVX-512F/BW/VL/DQ + AVX512_BF16 on this CPU";
      mk_ = &amx_emulated_microkernel();
      bf16_ = true;
    } else if (GetParam() == "amx") {
      if (detected_isa() != Isa::amx) GTEST_SKIP() << "no AMX-BF16 (with the OS's permission)";
      mk_ = &amx_microkernel();
      bf16_ = true;
    } else {
      mk_ = &portable_microkernel();
    }
  }

  // An operand or probability as the kernel multiplies it (exactly).
  float op(float x) const { return bf16_ ? round_bf16(x) : x; }
  std::vector<float> ops(std::vector<float> v) const {
    for (float& x : v) x = op(x);
    return v;
  }

  // qk over packed q (m x d) and a packed K tile of n tokens, checked against double.
  void check_qk(Checker& ck, const Rows& q, int m, const Rows& k, int n, int d, const void* pq,
                const void* pk, float scale) {
    std::vector<float> s(static_cast<size_t>(m) * kKvTile + kGuard, kNaN);
    std::fill(s.end() - kGuard, s.end(), kCanary);
    mk_->qk(pq, m, pk, d, scale, s.data());
    check_scores(ck, s, q, m, k, n, d, scale);
  }

  // Scores s (m x kKvTile, then kGuard canaries) of q against the n tokens of k, against double:
  // slots j >= n exactly 0.
  void check_scores(Checker& ck, const std::vector<float>& s, const Rows& q, int m, const Rows& k,
                    int n, int d, float scale) {
    expect_guard(ck, s);
    const std::vector<float> qv = ops(q.val), kv = ops(k.val);
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j < kKvTile; ++j) {
        const float got = s[static_cast<size_t>(i) * kKvTile + j];
        if (j >= n) {  // zero-filled slot: exactly 0
          ck.same(got, 0.0f, i, j);
          continue;
        }
        double ref = 0, mag = 0;
        for (int c = 0; c < d; ++c) {
          const double t = static_cast<double>(qv[static_cast<size_t>(i) * d + c]) *
                           kv[static_cast<size_t>(j) * d + c];
          ref += t;
          mag += std::fabs(t);
        }
        ck.close(got, ref * scale, (d + 4) * kU * mag * std::fabs(scale), i, j);
      }
    }
  }

  // pv into o0 over a packed V tile of n tokens: with the call's n (p beyond n NaN, never read)
  // and with kKvTile (p beyond n non-zero: the zero-filled slots must contribute nothing).
  void check_pv(Checker& ck, std::mt19937& rng, const Rows& v, int m, int n, int d,
                const void* pv) {
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    std::vector<float> o0(static_cast<size_t>(m) * d);
    for (float& x : o0) x = uni(rng);
    const std::vector<float> vv = ops(v.val);
    for (const bool full : {false, true}) {
      const std::vector<float> p = make_p(rng, m, n, full ? 0.5f : kNaN);
      std::vector<float> o = o0;
      o.resize(o0.size() + kGuard, kCanary);
      mk_->pv(p.data(), m, full ? kKvTile : n, pv, d, o.data());
      expect_guard(ck, o);
      std::vector<double> ref(d), mag(d);
      for (int i = 0; i < m; ++i) {
        for (int c = 0; c < d; ++c) {
          ref[c] = o0[static_cast<size_t>(i) * d + c];
          mag[c] = std::fabs(ref[c]);
        }
        for (int j = 0; j < n; ++j) {
          const double pij = op(p[static_cast<size_t>(i) * kKvTile + j]);
          const float* vj = &vv[static_cast<size_t>(j) * d];
          for (int c = 0; c < d; ++c) {
            ref[c] += pij * vj[c];
            mag[c] += std::fabs(pij * vj[c]);
          }
        }
        for (int c = 0; c < d; ++c) {
          ck.close(o[static_cast<size_t>(i) * d + c], ref[c], (n + 4) * kU * mag[c], i, c);
        }
      }
    }
  }

  const AttnMicrokernel* mk_ = nullptr;
  bool bf16_ = false;  // the kernel rounds operands and probabilities to bf16
};

TEST_P(Microkernel, QkMatchesDouble) {
  std::mt19937 rng(1);
  const float scales[] = {1.0f, 0.0625f, -1.75f};
  int t = 0;
  for (const DType dt : kTypes) {
    for (const int d : kDs) {
      const Rows q = make_rows(rng, dt, 128, d);
      const Rows k = make_rows(rng, dt, kKvTile, d);
      for (const int n : kNs) {
        Buffer pk(mk_->packed_k_bytes(d), rng);
        mk_->pack_k(k.ptr.data(), n, dt, d, pk.p);
        for (const int m : kMs) {
          Buffer pq(mk_->packed_q_bytes(m, d), rng);
          mk_->pack_q(q.ptr.data(), m, dt, d, pq.p);
          Checker ck{ctx("qk", dt, m, n, d)};
          check_qk(ck, q, m, k, n, d, pq.p, pk.p, scales[t++ % 3]);
          ASSERT_EQ(ck.failures, 0) << ck.what;
        }
      }
    }
  }
}

// The optional token-major qk (pack_qt + qk_tokens, m <= kSmallRows) reads K straight from
// bf16 token rows at shuffled slots followed by NaN, 4-byte or only 2-byte aligned; it must
// read neither Q rows >= m nor tokens >= n (null pointers here, or NaN rows), and never an
// element past d channels (NaN there would reach the scores through Q's zero padding).
TEST_P(Microkernel, QkTokensMatchesDouble) {
  if (mk_->qk_tokens == nullptr) {
    ASSERT_EQ(mk_->pack_qt, nullptr);
    GTEST_SKIP() << mk_->name << " has no qk_tokens (the drivers pack K)";
  }
  ASSERT_NE(mk_->pack_qt, nullptr);
  ASSERT_NE(mk_->packed_qt_bytes, nullptr);
  std::mt19937 rng(7);
  const float scales[] = {1.0f, 0.0625f, -1.75f};
  const std::vector<uint16_t> nan_row(640, 0xffff);
  int t = 0;
  for (const DType dt : kTypes) {  // Q's dtype; the tokens are bf16
    for (const int d : {8, 33, 34, 72, 512, 575, 576}) {  // every d % 4
      const Rows q = make_rows(rng, dt, kSmallRows, d);
      Rows k = make_rows(rng, DType::bf16, kKvTile, d);
      // The same tokens shifted by 2 bytes: rows 2 (mod 4) aligned.
      std::vector<unsigned char> shifted(k.pool.size() + 2, 0xff);
      std::memcpy(shifted.data() + 2, k.pool.data(), k.pool.size());
      for (const bool shift : {false, true}) {
        std::vector<const void*> tok = k.ptr;
        if (shift) {
          for (const void*& p : tok) {
            p = shifted.data() + 2 + (static_cast<const unsigned char*>(p) - k.pool.data());
          }
        }
        for (const int n : kNs) {
          std::vector<const void*> tn = tok;
          for (int j = n; j < kKvTile; ++j) tn[j] = (n + j) % 2 == 0 ? nullptr : nan_row.data();
          for (const int m : {1, 3, 8, 9, 15, 16}) {
            std::vector<const void*> qr = q.ptr;
            std::fill(qr.begin() + m, qr.end(), nullptr);
            Buffer pq(mk_->packed_qt_bytes(m, d), rng);
            mk_->pack_qt(qr.data(), m, dt, d, pq.p);
            const float scale = scales[t++ % 3];
            std::vector<float> s(static_cast<size_t>(m) * kKvTile + kGuard, kNaN);
            std::fill(s.end() - kGuard, s.end(), kCanary);
            mk_->qk_tokens(pq.p, m, tn.data(), n, d, scale, s.data());
            Checker ck{ctx("qk_tokens", dt, m, n, d) + (shift ? " shifted" : "")};
            check_scores(ck, s, q, m, k, n, d, scale);
            ASSERT_EQ(ck.failures, 0) << ck.what;
          }
        }
      }
    }
  }
}

TEST_P(Microkernel, PvMatchesDouble) {
  std::mt19937 rng(2);
  for (const DType dt : kTypes) {
    for (const int d : kDs) {
      const Rows v = make_rows(rng, dt, kKvTile, d);
      for (const int n : kNs) {
        Buffer pv(mk_->packed_v_bytes(d), rng);
        mk_->pack_v(v.ptr.data(), n, dt, d, pv.p);
        for (const int m : kMs) {
          Checker ck{ctx("pv", dt, m, n, d)};
          check_pv(ck, rng, v, m, n, d, pv.p);
          ASSERT_EQ(ck.failures, 0) << ck.what;
        }
      }
    }
  }
}

TEST_P(Microkernel, PtMatchesDouble) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (const DType dt : kTypes) {
    for (const int d : kDs) {
      const Rows rows = make_rows(rng, dt, 128, d);
      const std::vector<float> rv = ops(rows.val);
      for (const int m : kMs) {
        Buffer pr(mk_->packed_rows_bytes(m, d), rng);
        mk_->pack_rows(rows.ptr.data(), m, dt, d, pr.p);
        for (const int n : kNs) {
          // Keys j >= n have p = 0 (as the drivers guarantee): their accumulators stay as
          // they were, bit for bit.
          const std::vector<float> p = make_p(rng, m, n, 0.0f);
          std::vector<float> acc0(static_cast<size_t>(kKvTile) * d);
          for (float& x : acc0) x = uni(rng);
          std::vector<float> acc = acc0;
          acc.resize(acc0.size() + kGuard, kCanary);
          mk_->pt(p.data(), m, pr.p, d, acc.data());
          Checker ck{ctx("pt", dt, m, n, d)};
          expect_guard(ck, acc);
          std::vector<double> ref(d), mag(d);
          for (int j = 0; j < kKvTile; ++j) {
            const float* a0 = &acc0[static_cast<size_t>(j) * d];
            const float* a = &acc[static_cast<size_t>(j) * d];
            if (j >= n) {
              for (int c = 0; c < d; ++c) ck.same(a[c], a0[c], j, c);
              continue;
            }
            for (int c = 0; c < d; ++c) {
              ref[c] = a0[c];
              mag[c] = std::fabs(ref[c]);
            }
            for (int i = 0; i < m; ++i) {
              const double pij = op(p[static_cast<size_t>(i) * kKvTile + j]);
              const float* ri = &rv[static_cast<size_t>(i) * d];
              for (int c = 0; c < d; ++c) {
                ref[c] += pij * ri[c];
                mag[c] += std::fabs(pij * ri[c]);
              }
            }
            for (int c = 0; c < d; ++c) ck.close(a[c], ref[c], (m + 4) * kU * mag[c], j, c);
          }
          ASSERT_EQ(ck.failures, 0) << ck.what;
        }
      }
    }
  }
}

// MLA: K and V share storage, V = the first d_v channels of each token.
TEST_P(Microkernel, PackKvMatchesDouble) {
  std::mt19937 rng(4);
  const std::pair<int, int> dims[] = {{576, 512}, {512, 512}, {136, 72}, {64, 64}};
  for (const DType dt : kTypes) {
    for (const auto& [d_qk, d_v] : dims) {
      const Rows kv = make_rows(rng, dt, kKvTile, d_qk);
      const Rows q = make_rows(rng, dt, 64, d_qk);
      // V as rows of d_v channels (same pointers, the first d_v values).
      Rows v{dt, d_v, {}, kv.ptr, {}};
      for (int j = 0; j < kKvTile; ++j) {
        for (int c = 0; c < d_v; ++c) v.val.push_back(kv.at(j, c));
      }
      for (const int n : kNs) {
        Buffer pk(mk_->packed_k_bytes(d_qk), rng), pv(mk_->packed_v_bytes(d_v), rng);
        mk_->pack_kv(kv.ptr.data(), n, dt, d_qk, d_v, pk.p, pv.p);
        for (const int m : {1, 5, 64}) {
          Buffer pq(mk_->packed_q_bytes(m, d_qk), rng);
          mk_->pack_q(q.ptr.data(), m, dt, d_qk, pq.p);
          Checker ck{ctx("pack_kv", dt, m, n, d_qk) + " d_v=" + std::to_string(d_v)};
          check_qk(ck, q, m, kv, n, d_qk, pq.p, pk.p, 0.125f);
          check_pv(ck, rng, v, m, n, d_v, pv.p);
          ASSERT_EQ(ck.failures, 0) << ck.what;
        }
      }
    }
  }
}

// Every 16-bit pattern (every fp32 sample for fp32) goes through each packing function
// unchanged: identity operands make the products return the packed values exactly. qk and the
// pt fast path see only finite values (0 * inf would be NaN); pv sees all of them.
// The bf16 kernel packs bf16 patterns unchanged except subnormals, which VDPBF16PS reads as
// zero (so they come out as +-0), and rounds fp16 patterns to bf16 (`op`), NaN staying NaN.
TEST_P(Microkernel, ConversionIsExact) {
  std::mt19937 rng(5);
  constexpr int kT = kKvTile;  // tiles of 64 x 64 values
  for (const DType dt : {DType::bf16, DType::fp16}) {
    std::vector<uint32_t> all(65536), finite;
    std::iota(all.begin(), all.end(), 0u);
    for (const uint32_t b : all) {
      const float f = dt == DType::bf16 ? bf16_to_float(static_cast<uint16_t>(b))
                                        : fp16_to_float(static_cast<uint16_t>(b));
      if (std::isfinite(f)) finite.push_back(b);
    }
    Checker ck{std::string("conversion ") + dtype_str(dt)};
    // Identities: q_i = e_i (for K) and K_j = e_j (for Q), as fp32 rows.
    std::vector<uint32_t> eye(kT * kT, 0);
    for (int i = 0; i < kT; ++i) eye[i * kT + i] = std::bit_cast<uint32_t>(1.0f);
    const Rows ident = make_rows(rng, DType::fp32, kT, kT, &eye);
    std::vector<float> p_eye(kT * kT, 0.0f);
    for (int i = 0; i < kT; ++i) p_eye[i * kT + i] = 1.0f;

    for (size_t base = 0; base < all.size(); base += kT * kT) {
      const std::vector<uint32_t> chunk(all.begin() + base,
                                        all.begin() + std::min(all.size(), base + kT * kT));
      const Rows x = make_rows(rng, dt, kT, kT, &chunk);
      // pack_v -> pv with P = I, o = 0: o_i = v_i.
      Buffer pv(mk_->packed_v_bytes(kT), rng);
      mk_->pack_v(x.ptr.data(), kT, dt, kT, pv.p);
      std::vector<float> o(kT * kT, 0.0f);
      mk_->pv(p_eye.data(), kT, kT, pv.p, kT, o.data());
      for (int i = 0; i < kT; ++i) {
        for (int c = 0; c < kT; ++c) ck.same(o[i * kT + c], op(x.at(i, c)), i, c);
      }
    }
    for (size_t base = 0; base < finite.size(); base += kT * kT) {
      std::vector<uint32_t> chunk(finite.begin() + base,
                                  finite.begin() + std::min(finite.size(), base + kT * kT));
      const Rows x = make_rows(rng, dt, kT, kT, &chunk);
      // pack_q -> qk against K = I: s_ij = q_i[j].
      Buffer pq(mk_->packed_q_bytes(kT, kT), rng), pk(mk_->packed_k_bytes(kT), rng);
      mk_->pack_q(x.ptr.data(), kT, dt, kT, pq.p);
      mk_->pack_k(ident.ptr.data(), kT, DType::fp32, kT, pk.p);
      std::vector<float> s(kT * kT);
      mk_->qk(pq.p, kT, pk.p, kT, 1.0f, s.data());
      for (int i = 0; i < kT; ++i) {
        for (int j = 0; j < kT; ++j) ck.same(s[i * kT + j], op(x.at(i, j)), i, j);
      }
      // pack_k -> qk with Q = I: s_ij = k_j[i].
      mk_->pack_q(ident.ptr.data(), kT, DType::fp32, kT, pq.p);
      mk_->pack_k(x.ptr.data(), kT, dt, kT, pk.p);
      mk_->qk(pq.p, kT, pk.p, kT, 1.0f, s.data());
      for (int i = 0; i < kT; ++i) {
        for (int j = 0; j < kT; ++j) ck.same(s[i * kT + j], op(x.at(j, i)), i, j);
      }
      // pack_kv's K through qk and its V through pv, and pack_rows -> pt with P = I.
      Buffer pv(mk_->packed_v_bytes(kT), rng), pr(mk_->packed_rows_bytes(kT, kT), rng);
      mk_->pack_kv(x.ptr.data(), kT, dt, kT, kT, pk.p, pv.p);
      mk_->qk(pq.p, kT, pk.p, kT, 1.0f, s.data());
      std::vector<float> o(kT * kT, 0.0f);
      mk_->pv(p_eye.data(), kT, kT, pv.p, kT, o.data());
      mk_->pack_rows(x.ptr.data(), kT, dt, kT, pr.p);
      std::vector<float> acc(kT * kT, 0.0f);
      mk_->pt(p_eye.data(), kT, pr.p, kT, acc.data());
      for (int i = 0; i < kT; ++i) {
        for (int j = 0; j < kT; ++j) {
          ck.same(s[i * kT + j], op(x.at(j, i)), i, j);
          ck.same(o[i * kT + j], op(x.at(i, j)), i, j);
          ck.same(acc[i * kT + j], op(x.at(i, j)), i, j);
        }
      }
    }
    EXPECT_EQ(ck.failures, 0) << ck.what;
  }
}

// A NaN or inf in V (or in a row of pt) whose probability is 0 does not reach the output; one
// with a non-zero probability does.
TEST_P(Microkernel, ZeroProbabilityKeepsNonFiniteOut) {
  std::mt19937 rng(6);
  for (const DType dt : {DType::bf16, DType::fp32}) {
    const int m = 8, n = 40, d = 72;
    for (const float bad : {kNaN, kInf}) {
      Rows v = make_rows(rng, dt, kKvTile, d);
      // Token 7 holds `bad` in channel 5.
      std::vector<uint32_t> bits;
      for (int j = 0; j < kKvTile; ++j) {
        for (int c = 0; c < d; ++c) {
          const float f = j == 7 && c == 5 ? bad : v.at(j, c);
          bits.push_back(dt == DType::bf16 ? float_to_bf16(f) : std::bit_cast<uint32_t>(f));
        }
      }
      v = make_rows(rng, dt, kKvTile, d, &bits);
      Buffer pv(mk_->packed_v_bytes(d), rng);
      mk_->pack_v(v.ptr.data(), n, dt, d, pv.p);
      // Even rows give token 7 probability 0, odd rows do not.
      std::vector<float> p = make_p(rng, m, n, kNaN);
      for (int i = 0; i < m; ++i) p[i * kKvTile + 7] = i % 2 == 0 ? 0.0f : 0.5f;
      std::vector<float> o(static_cast<size_t>(m) * d, 1.0f);
      mk_->pv(p.data(), m, n, pv.p, d, o.data());
      Checker ck{std::string("pv non-finite ") + dtype_str(dt)};
      for (int i = 0; i < m; ++i) {
        for (int c = 0; c < d; ++c) {
          const float got = o[static_cast<size_t>(i) * d + c];
          if (i % 2 == 1 && c == 5) {
            ck.same(got, bad, i, c);
            continue;
          }
          double ref = 1.0, mag = 1.0;
          for (int j = 0; j < n; ++j) {
            const float pij = op(p[i * kKvTile + j]);
            if (pij == 0.0f) continue;
            ref += static_cast<double>(pij) * op(v.at(j, c));
            mag += std::fabs(static_cast<double>(pij) * op(v.at(j, c)));
          }
          ck.close(got, ref, (n + 4) * kU * mag, i, c);
        }
      }
      EXPECT_EQ(ck.failures, 0) << ck.what;

      // pt: row 2 of 6 holds `bad` in channel 5; keys 0..31 give row 2 probability 0.
      const int mr = 6;
      std::vector<uint32_t> rbits(bits.begin(),
                                  bits.begin() + mr * d);  // finite: token 7 lies beyond
      rbits[2 * d + 5] = dt == DType::bf16 ? float_to_bf16(bad) : std::bit_cast<uint32_t>(bad);
      const Rows r2 = make_rows(rng, dt, mr, d, &rbits);
      Buffer pr(mk_->packed_rows_bytes(mr, d), rng);
      mk_->pack_rows(r2.ptr.data(), mr, dt, d, pr.p);
      std::vector<float> pp = make_p(rng, mr, n, 0.0f);
      for (int j = 0; j < n; ++j) pp[2 * kKvTile + j] = j < 32 ? 0.0f : 0.25f;
      std::vector<float> acc(static_cast<size_t>(kKvTile) * d, -1.0f);
      mk_->pt(pp.data(), mr, pr.p, d, acc.data());
      Checker ct{std::string("pt non-finite ") + dtype_str(dt)};
      for (int j = 0; j < kKvTile; ++j) {
        for (int c = 0; c < d; ++c) {
          const float got = acc[static_cast<size_t>(j) * d + c];
          if (j >= 32 && j < n && c == 5) {
            ct.same(got, bad, j, c);
            continue;
          }
          double ref = -1.0, mag = 1.0;
          for (int i = 0; i < mr; ++i) {
            const float pij = op(pp[i * kKvTile + j]);
            if (pij == 0.0f) continue;
            ref += static_cast<double>(pij) * op(r2.at(i, c));
            mag += std::fabs(static_cast<double>(pij) * op(r2.at(i, c)));
          }
          ct.close(got, ref, (mr + 4) * kU * mag, j, c);
        }
      }
      EXPECT_EQ(ct.failures, 0) << ct.what;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, Microkernel, ::testing::Values("portable", "avx2", "avx512", "avx512bf16",
                                                           "amx_emulated", "amx"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST(MicrokernelTable, Names) {
  EXPECT_STREQ(portable_microkernel().name, "portable");
  EXPECT_STREQ(avx2_microkernel().name, "avx2");
  EXPECT_STREQ(avx512_microkernel().name, "avx512");  // the table itself is safe to read anywhere
  EXPECT_STREQ(avx512bf16_microkernel().name, "avx512bf16");
  EXPECT_STREQ(amx_microkernel().name, "amx");
  EXPECT_STREQ(amx_emulated_microkernel().name, "amx-emulated");
}

}  // namespace
}  // namespace flashmla::cpu
