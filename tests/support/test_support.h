// Helpers shared by the test suites.
#pragma once

#include <gtest/gtest.h>

#include <string>

namespace qvl::testing {

std::string source_dir();                   // the repository root
std::string data_path(const std::string& rel);  // source_dir()/rel
bool file_exists(const std::string& path);

// A fresh temporary directory, removed with everything in it when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Runs the qvl binary with `args` (already shell-quoted where needed).
CommandResult run_qvl(const std::string& args);

// Writes raw bytes to a file.
void write_file(const std::string& path, const std::string& bytes);

}  // namespace qvl::testing

// Skips the current test with the reason when a data file is absent (ctest shows it as skipped).
#define QVL_REQUIRE_FILE(path)                                                                    \
  do {                                                                                           \
    if (!::qvl::testing::file_exists(path)) GTEST_SKIP() << "data file absent: " << (path)        \
                                                          << " (run scripts/record.sh to make it)"; \
  } while (0)
