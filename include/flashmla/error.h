// The one exception type of the library. Host API functions throw it for every invalid
// argument; kernels never throw. The message always names the function, the argument, what was
// expected and what was given.
#pragma once

#include <stdexcept>
#include <string>

namespace flashmla {

enum class ErrorKind {
  value,        // a value, shape or layout is wrong (Python: ValueError)
  type,         // a dtype is wrong (Python: TypeError)
  unsupported,  // valid request this build/backend cannot run (Python: RuntimeError)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string function, std::string argument, std::string expected,
        std::string got);

  ErrorKind kind() const noexcept { return kind_; }
  const std::string& function() const noexcept { return function_; }
  const std::string& argument() const noexcept { return argument_; }
  const std::string& expected() const noexcept { return expected_; }
  const std::string& got() const noexcept { return got_; }

 private:
  ErrorKind kind_;
  std::string function_, argument_, expected_, got_;
};

}  // namespace flashmla
