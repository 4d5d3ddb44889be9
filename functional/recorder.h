// qvl::Recorder — the one interface in functional/: an observer that sees every module call, off by
// default (nullptr). instrument/ implements it to write the qvl.recording HDF5 schema, so a chained C++
// run can be diffed against the transformers recording module by module (docs/design.md §3, §6).
#pragma once

#include <string>

#include "functional/value.h"

namespace qvl {

class Recorder {
 public:
  virtual ~Recorder() = default;
  // Called when a module call starts; returns a handle passed to end(). `inputs` is a Dict of named
  // inputs ("arg0", ... or keyword names), `settings_json` per-call facts (e.g. full vs window).
  virtual int64_t begin(const std::string& module_path, const std::string& module_class, const Value& inputs,
                        const std::string& settings_json) = 0;
  virtual void end(int64_t handle, const Value& outputs) = 0;
};

// Scoped helper for function bodies: `RecordScope rs(rec, path, "Qwen2_5_VLMLP", inputs); ... rs.done(out);`
// Does nothing when rec is nullptr, and never builds the input Value then.
class RecordScope {
 public:
  template <typename MakeInputs>
  RecordScope(Recorder* rec, const std::string& path, const char* cls, MakeInputs&& make_inputs,
              const std::string& settings_json = "{}")
      : rec_(rec) {
    if (rec_) handle_ = rec_->begin(path, cls, make_inputs(), settings_json);
  }
  // Settings built lazily too (only when recording).
  template <typename MakeInputs, typename MakeSettings>
  RecordScope(Recorder* rec, const std::string& path, const char* cls, MakeInputs&& make_inputs,
              MakeSettings&& make_settings, int /*lazy settings tag*/)
      : rec_(rec) {
    if (rec_) handle_ = rec_->begin(path, cls, make_inputs(), make_settings());
  }
  void done(const Value& outputs) {
    if (rec_) rec_->end(handle_, outputs);
    rec_ = nullptr;
  }

 private:
  Recorder* rec_;
  int64_t handle_ = -1;
};

}  // namespace qvl
