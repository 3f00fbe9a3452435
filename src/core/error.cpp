#include "flashmla/error.h"

#include <utility>

namespace flashmla {

static std::string compose(const std::string& function, const std::string& argument,
                           const std::string& expected, const std::string& got) {
  return function + ": argument '" + argument + "': expected " + expected + ", got " + got;
}

Error::Error(ErrorKind kind, std::string function, std::string argument, std::string expected,
             std::string got)
    : std::runtime_error(compose(function, argument, expected, got)),
      kind_(kind),
      function_(std::move(function)),
      argument_(std::move(argument)),
      expected_(std::move(expected)),
      got_(std::move(got)) {}

}  // namespace flashmla
