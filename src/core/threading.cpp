#include <omp.h>

#include <cstdlib>

#include "flashmla/flashmla.h"

namespace flashmla {

static int env_num_threads() {
  static const int value = [] {
    const char* s = std::getenv("FLASHMLA_NUM_THREADS");
    if (s == nullptr) return 0;
    char* end = nullptr;
    long v = std::strtol(s, &end, 10);
    return (end != s && *end == '\0' && v > 0 && v <= 4096) ? static_cast<int>(v) : 0;
  }();
  return value;
}

int resolved_num_threads(const Context& ctx) {
  if (ctx.num_threads > 0) return ctx.num_threads;
  if (int n = env_num_threads(); n > 0) return n;
  return omp_get_max_threads();
}

}  // namespace flashmla
