// Child processes: start one (stdout and stderr inherited), poll or wait for it. Used by `qvl import` (the
// pinned Python recorder) and `qvl vit sweep --jobs` (copies of itself).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace qvl {

// Starts argv[0] (searched in PATH) with argv; throws naming the program when it cannot start.
pid_t spawn_process(const std::vector<std::string>& argv);

// Waits for `pid`; returns its exit status (128 + signal if killed). With `block` false, returns -1 while
// the child is still running.
int wait_process(pid_t pid, bool block = true);

// spawn_process + wait_process.
int run_process(const std::vector<std::string>& argv);

// This process's own command line (/proc/self/cmdline), argv[0] replaced by the path of the running binary.
std::vector<std::string> own_command_line();

}  // namespace qvl
