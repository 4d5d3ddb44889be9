#include "instrument/process.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

extern char** environ;

namespace qvl {

pid_t spawn_process(const std::vector<std::string>& argv) {
  if (argv.empty()) throw std::runtime_error("spawn_process: empty command line");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = 0;
  if (int rc = posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ); rc != 0)
    throw std::runtime_error("cannot start '" + argv[0] + "': " + std::strerror(rc));
  return pid;
}

int wait_process(pid_t pid, bool block) {
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(pid, &status, block ? 0 : WNOHANG);
    if (r == pid) break;
    if (r == 0) return -1;  // still running
    if (errno != EINTR) throw std::runtime_error("waiting for process " + std::to_string(pid) + " failed: " + std::strerror(errno));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int run_process(const std::vector<std::string>& argv) { return wait_process(spawn_process(argv)); }

std::vector<std::string> own_command_line() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> argv;
  for (size_t s = 0; s < all.size();) {
    const size_t e = all.find('\0', s);
    argv.push_back(all.substr(s, e == std::string::npos ? std::string::npos : e - s));
    if (e == std::string::npos) break;
    s = e + 1;
  }
  if (argv.empty()) throw std::runtime_error("cannot read this process's command line from /proc/self/cmdline");
  argv[0] = std::filesystem::read_symlink("/proc/self/exe").string();
  return argv;
}

}  // namespace qvl
