// The `qvl convert` and `qvl inspect` commands (tools/qvl.cpp parses the options and calls these).
//
//   qvl convert HF_DIR OUT.h5 [--dtype bf16|f16|f32] [--gzip N]          checkpoint -> qvl.weights
//   qvl convert --to-safetensors IN.h5 OUT_DIR [--layout hub|runtime] [--max-shard-size 5GB] [--dtype ...]
//   qvl inspect PATH      a qvl.weights file, a recording, a .safetensors file or a checkpoint directory
//
// Output goes to a temporary next to the target, renamed when complete (".<name>.tmp-<pid>"); a run killed
// with SIGKILL leaves that temporary, and the next run to the same target removes it. SIGINT and SIGTERM
// stop the conversion after the current tensor and remove the temporary. The progress bar (bytes/s, ETA)
// goes to stderr: live on a terminal, else one line every 10 s once a run has taken 5 s (quiet for short
// runs and tests); --no-progress turns it off.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace qvl {

struct ConvertCommand {
  std::string src, out;
  bool to_safetensors = false;
  std::string dtype;                   // "" = keep
  int gzip = 0;                        // HDF5 output only
  std::string layout;                  // --to-safetensors: "hub", "runtime", "" = the file's own
  std::string max_shard_size = "5GB";  // --to-safetensors
  bool progress = true;
  bool fsync = true;
};
int run_convert(const ConvertCommand& c);

// Lists the tree, shapes, dtypes and byte sizes, reading no tensor data. A checkpoint directory is also
// checked (index, key layout, shapes against config.json); a failed check prints the reason, returns 1.
int run_inspect(const std::string& path, std::FILE* out = stdout);

// "5GB" (10^9), "500MB", "4GiB" (2^30), "123" (bytes) -> bytes; errors name the text.
uint64_t parse_byte_size(const std::string& text);

// A progress bar on stderr: done/total bytes, bytes per second, ETA.
class ProgressBar {
 public:
  ProgressBar(std::string label, bool enabled);
  void update(uint64_t done, uint64_t total);
  void finish();  // ends a live line

 private:
  std::string label_;
  bool enabled_, tty_, printed_ = false;
  double start_, last_ = -1e9;
};

}  // namespace qvl
