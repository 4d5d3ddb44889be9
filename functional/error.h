// The one-line text of an exception, for a CLI's error line or a report's note: a c10::Error (what the
// TORCH_CHECKs in functional/ throw) without its C++ backtrace, any other exception as its what().
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace qvl {

inline std::string error_message(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

}  // namespace qvl
