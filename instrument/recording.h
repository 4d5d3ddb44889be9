// The qvl.recording file (docs/design.md §3): every call of every recorded module, in execution order.
// The reader loads call headers eagerly and tensors on demand; the writer is the C++ Recorder.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "functional/recorder.h"
#include "instrument/h5io.h"

namespace qvl {

struct CallHeader {
  int64_t seq = 0;
  std::string group;         // "000012"
  std::string module_path;   // "model.visual.blocks.3.attn", or "<parent>.<function>" for free functions
  std::string module_class;  // "Qwen2_5_VLVisionAttention", or the function name
  int64_t call_index = 0;    // n-th call of this path
  int64_t parent = -1;       // seq of the enclosing call
  std::string settings;      // JSON text
  int64_t generate_step = -1;  // settings.generate_step: 0 = generate's prefill, k = its k-th decode step;
                               // -1 for a call outside generate (the plain forward pass)
};

struct RecordedCall {
  CallHeader header;
  Value inputs;        // Dict: "arg0".. and keyword names
  Value outputs;       // Dict: "out" or "out0", "out1", ...
  Value outputs_fp32;  // Dict like outputs (bf16 recordings only), else None: HF's fp32 module on the
                       // same (upcast) inputs, the per-call noise floor for isolated replay
  Value outputs_fp32_chain;  // bf16 recordings: the fp32 model run end to end, the noise floor for a chain

  // A named input: the keyword `name` if present, else positional "arg<pos>"; error lists what exists.
  const Value& input(const std::string& name, int pos = -1) const;
  // The single output tensor ("out"), or out<i>.
  const Value& output(int index = -1) const;
};

// "000012": the name of call `seq`'s group under /calls.
std::string call_group_name(int64_t seq);
// The call groups of a recording must be 000000 .. N-1, with no gap, N = the root attribute num_calls
// (`stated`; -1 in files written before it, where only gaps can be seen). Throws an h5::CorruptError naming
// what is missing, e.g. "recording 'x.h5': call 000010 missing (root says 58 calls; found 57)".
void check_call_groups(const std::vector<std::string>& names, int64_t stated, const std::string& path);

// What a recording holds, in brief: the number of calls of each module class and of generate's recorded forward
// passes (prefill + decode steps). Both writers store it as the root attribute `call_summary` (JSON text,
// {"classes": {class: n}, "generate_steps": n}), so that a reader that only needs to know what is inside (the
// golden suites, when they register one test per recording) does not open every call group.
struct CallSummary {
  std::map<std::string, int64_t> classes;
  int64_t generate_steps = 0;  // top-level calls of generate's forward passes; 0: no generate recorded

  static CallSummary of(const std::vector<CallHeader>& headers);
  std::string json() const;
  bool has(const std::string& module_class) const { return classes.count(module_class) > 0; }
  bool operator==(const CallSummary& o) const { return classes == o.classes && generate_steps == o.generate_steps; }
};

class Recording {
 public:
  // Errors name the file and what is wrong: missing call groups (check_call_groups), a dataset that fails
  // its checksum (on load()). A file without checksums reads, with one note on stderr (h5io.h).
  static Recording open(const std::string& path);
  // The root attribute `call_summary` alone, without reading the call groups; a file written before the
  // attribute existed is opened in full and summarised. open() checks the stored summary against the calls.
  static CallSummary summary(const std::string& path);

  const std::string& path() const { return path_; }
  const std::string& attr(const std::string& name) const;  // string root attrs (format, producer, dtype, config...)
  bool has_attr(const std::string& name) const { return attrs_.count(name) > 0; }
  const std::vector<CallHeader>& calls() const { return headers_; }
  // The top-level Qwen2_5_VLForConditionalGeneration call of each recorded generate step (settings.
  // generate_step >= 0), in order: [0] is generate's prefill, [k] its k-th decode step. Empty if none.
  std::vector<size_t> generate_steps() const;
  RecordedCall load(size_t index) const;

 private:
  std::string path_;
  std::shared_ptr<h5::File> file_;
  std::map<std::string, std::string> attrs_;
  std::vector<CallHeader> headers_;
};

// Writes the same schema from C++ functional calls (producer "qvl <version>"). Calls are numbered in
// begin() order (pre-order), so parents precede children, exactly as the Python recorder does.
class RecordingWriter : public Recorder {
 public:
  RecordingWriter(std::string path, std::map<std::string, std::string> root_attrs);
  int64_t begin(const std::string& module_path, const std::string& module_class, const Value& inputs,
                const std::string& settings_json) override;
  void end(int64_t handle, const Value& outputs) override;
  void close();  // writes the file atomically; also called by the destructor only if no error occurred
  size_t size() const { return calls_.size(); }

 private:
  struct Pending {
    CallHeader header;
    Value inputs, outputs;
    bool ended = false;
  };
  std::string path_;
  std::map<std::string, std::string> root_attrs_;
  std::vector<Pending> calls_;
  std::vector<int64_t> stack_;
  std::map<std::string, int64_t> counts_;
  bool closed_ = false;
};

}  // namespace qvl
