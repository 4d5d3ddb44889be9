#include "tests/support/test_support.h"

#include <ftw.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

namespace qvl::testing {
namespace fs = std::filesystem;

std::string source_dir() { return QVL_SOURCE_DIR; }
std::string data_path(const std::string& rel) { return source_dir() + "/" + rel; }
bool file_exists(const std::string& path) { return fs::exists(path); }

TempDir::TempDir() {
  std::random_device rd;
  path_ = (fs::temp_directory_path() / ("qvl-test-" + std::to_string(rd()) + std::to_string(rd()))).string();
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  // Not std::filesystem::remove_all: the torch wheel's libtorch.so exports its own copy of that symbol,
  // which crashes when called from code built with the system libstdc++.
  nftw(path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
       FTW_DEPTH | FTW_PHYS);
}

CommandResult run_qvl(const std::string& args) {
  CommandResult r;
  const std::string cmd = std::string(QVL_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace qvl::testing
