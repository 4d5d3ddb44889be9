// HDF5 I/O: tensors of every dtype, nested Values, attributes, and the qvl.weights file (docs/design.md §3, §4).
//
// A tensor is a dataset in its own dtype with attr `dtype` = torch's name. bfloat16 is stored as uint16
// bits (attr dtype "bfloat16"), bool as uint8 (attr dtype "bool"); float16 is read either as an HDF5
// 16-bit float (h5py) or as uint16 bits. Errors name the file, the object and the expected/actual values.
#pragma once

#include <hdf5.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "functional/value.h"
#include "functional/weights.h"

namespace qvl::h5 {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// RAII for one hid_t.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept;
  ~Handle() { reset(); }
  void reset();
  hid_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// An open file; `path` is kept for error messages.
struct File {
  Handle h;
  std::string path;
  hid_t id() const { return h.id(); }
};

File open_read(const std::string& path);     // error if missing or not HDF5
File create_truncate(const std::string& path);  // for writers; use AtomicPath for the rename

// Writes to "<path>.tmp-<pid>" and renames onto `path` in commit(); the destructor removes the temporary
// if commit() was never reached, so a failed run leaves no partial output.
class AtomicPath {
 public:
  explicit AtomicPath(std::string final_path);
  ~AtomicPath();
  const std::string& tmp() const { return tmp_; }
  // Renames the temporary into place; `durable` fsyncs the file first and its directory after.
  void commit(bool durable = false);

 private:
  std::string final_, tmp_;
  bool done_ = false;
};

// Objects and attributes.
bool exists(hid_t loc, const std::string& name);
bool is_group(hid_t loc, const std::string& name);
std::vector<std::string> children(hid_t group);  // link names, sorted by name
Handle open_group(hid_t loc, const std::string& name, const std::string& where);
Handle make_group(hid_t loc, const std::string& name);
bool has_attr(hid_t obj, const std::string& name);
std::string attr_str(hid_t obj, const std::string& name, const std::string& where);
int64_t attr_int(hid_t obj, const std::string& name, const std::string& where);
void set_attr(hid_t obj, const std::string& name, const std::string& value);
void set_attr(hid_t obj, const std::string& name, int64_t value);

// Tensors. `where` is "file:/path/to/object" for messages.
// The dataset's `dtype` attribute names the torch dtype (bf16 is stored as uint16 bits); with
// dtype_from_attr = false it is ignored and the dtype follows the stored HDF5 type.
at::Tensor read_tensor(hid_t loc, const std::string& name, const std::string& where, bool dtype_from_attr = true);
void write_tensor(hid_t loc, const std::string& name, const at::Tensor& t, int gzip_level = 4);

// Nested values (docs/design.md §3: groups with attr kind = none/str/tuple/list/dict/object; datasets with
// kind = tensor/int/float/bool).
Value read_value(hid_t loc, const std::string& name, const std::string& where);
void write_value(hid_t loc, const std::string& name, const Value& v);

// The qvl.weights file.
struct WeightsFile {
  Weights weights;
  std::string config_json;                     // the HF config.json content
  std::map<std::string, std::string> attrs;    // every string root attribute (format, source, key_layout...)
};
WeightsFile read_weights(const std::string& path);
void write_weights(const std::string& path, const Weights& w, const std::map<std::string, std::string>& attrs,
                   int gzip_level = 0);

// Streaming writer of a qvl.weights file: tensors are written as they are added (memory stays bounded
// by one tensor), into a temporary file renamed into place by commit(). Without commit() nothing remains.
class WeightsWriter {
 public:
  WeightsWriter(const std::string& path, const std::map<std::string, std::string>& attrs, int gzip_level = 0);
  void add(const std::string& dotted, const at::Tensor& t);
  // For streaming copies that never hold a tensor in memory (the converter): creates the dataset
  // contiguous and unfiltered, its space allocated now and never filled by HDF5, and returns the byte offset
  // in tmp_path() where the caller writes its raw little-endian bytes (numel x itemsize of them).
  // Not with gzip. Zero-size tensors return 0 (nothing to write).
  uint64_t reserve(const std::string& dotted, at::ScalarType dtype, at::IntArrayRef shape);
  const std::string& tmp_path() const { return out_.tmp(); }
  void set_root_attr(const std::string& name, const std::string& value);  // any time before commit()
  void commit(bool durable = false);

 private:
  // Opens or creates the groups of `dotted` (kept open in `groups`) and returns the parent of its leaf;
  // error if the leaf already exists.
  hid_t parent_of_new(const std::string& dotted, std::vector<Handle>& groups);

  AtomicPath out_;
  File file_;
  int gzip_;
};

}  // namespace qvl::h5
