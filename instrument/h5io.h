// HDF5 I/O: tensors of every dtype, nested Values, attributes, and the qvl.weights file (docs/design.md §3, §4).
//
// A tensor is a dataset in its own dtype with attr `dtype` = torch's name. bfloat16 is stored as uint16
// bits (attr dtype "bfloat16"), bool as uint8 (attr dtype "bool"); float16 is read either as an HDF5
// 16-bit float (h5py) or as uint16 bits. Errors name the file, the object and the expected/actual values.
//
// Integrity (format_version 2 of qvl.weights and qvl.recording; the Python recorder follows the same rule):
// - files are written in the HDF5 1.8 format, whose object headers, groups and superblock carry checksums;
// - a dataset with data is chunked (chunk_dims) and filtered with HDF5's Fletcher-32 checksum, applied last,
//   after shuffle and gzip, so the stored bytes are what is checked;
// - a scalar or an empty dataset cannot be chunked: it is stored compact, inside its checksummed object
//   header (an empty one has no data, only its shape);
// - the root attribute `checksums` = "fletcher32" says all of this holds.
// A damaged dataset or header then fails its checksum on read, which is reported as a CorruptError naming
// the file and the object, never as wrong numbers. Files without the `checksums` attribute (written before)
// still read, with one note on stderr per file (note_if_unchecksummed).
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

// A file whose bytes were damaged: a checksum failed (HDF5's Fletcher-32 over a dataset's data, or the
// checksum of an object header), or the structure cannot be what the writer made.
class CorruptError : public Error {
 public:
  using Error::Error;
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
File open_write(const std::string& path);    // an existing file, read-write (tests that damage files)
File create_truncate(const std::string& path);  // for writers (HDF5 1.8 format); use AtomicPath for the rename

// --- integrity ---
constexpr const char* kChecksums = "fletcher32";  // the root attribute `checksums` of a checksummed file
constexpr uint64_t kChunkBytes = 16u << 20;       // the largest chunk; one converter write
constexpr uint64_t kGzipChunkBytes = 1u << 20;    // the largest chunk under gzip
// Chunk dims for a dataset of `dims` (all > 0): the whole trailing dims while they fit in `limit` bytes,
// then as many slices of the next dim as fit (at least 1), and 1 for the dims before it. So each chunk is
// one contiguous run of the row-major data, and the chunks follow each other in that order.
std::vector<hsize_t> chunk_dims(const std::vector<hsize_t>& dims, size_t itemsize, uint64_t limit);
// HDF5's Fletcher-32 (the checksum its filter appends to each chunk, little-endian): 16-bit big-endian
// words, sums reduced modulo 65535, an odd last byte as the high half of a word.
uint32_t fletcher32(const uint8_t* data, size_t n);
// Whether the file says its datasets are checksummed (root attribute `checksums`). If not, prints once per
// path per process to stderr a note that damage inside it cannot be detected, and returns false.
bool note_if_unchecksummed(hid_t file, const std::string& path);
// The datasets of a file that no checksum covers (neither chunked with Fletcher-32 nor compact in a
// checksummed object header), as "/path" strings; empty when every dataset is covered.
std::vector<std::string> unchecksummed_datasets(const std::string& path);
// The HDF5 error stack of the failure just seen, as one line ("" if empty); clears it.
std::string take_error_stack();

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

// Writes one new dataset piece by piece, in row-major order, never holding the tensor: each piece is one
// chunk (chunk_dims with kChunkBytes), which the caller puts into buffer() as raw little-endian bytes;
// put() appends its Fletcher-32 and writes it as it will be stored (H5Dwrite_chunk: no copy by HDF5). A
// scalar is one piece written compact; an empty tensor has none. The buffer is the writer's, reused.
class DatasetStream {
 public:
  DatasetStream(Handle ds, std::vector<hsize_t> dims, size_t itemsize, std::vector<uint8_t>* buffer,
                std::string where);
  uint64_t next_elems() const;  // elements of the next piece; 0 once every piece is written
  uint8_t* buffer() { return buffer_->data(); }
  void put();                   // writes the next piece from buffer()

 private:
  Handle ds_;
  std::vector<hsize_t> dims_, chunk_;
  size_t itemsize_;
  std::vector<uint8_t>* buffer_;
  std::string where_;
  size_t split_ = 0;                  // the dim the chunks cut (chunk_[d] = 1 before it, full after it)
  uint64_t inner_ = 1;                // elements of one slice of dim split_
  uint64_t done_ = 0, numel_ = 1;     // elements written, and in all
};

// Streaming writer of a qvl.weights file: tensors are written as they are added (memory stays bounded
// by one tensor), into a temporary file renamed into place by commit(). Without commit() nothing remains.
class WeightsWriter {
 public:
  WeightsWriter(const std::string& path, const std::map<std::string, std::string>& attrs, int gzip_level = 0);
  void add(const std::string& dotted, const at::Tensor& t);
  // For streaming copies that never hold a tensor in memory (the converter): creates the dataset (chunked
  // with Fletcher-32, or compact) and returns its stream. Not with gzip.
  DatasetStream stream(const std::string& dotted, at::ScalarType dtype, at::IntArrayRef shape);
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
  std::vector<uint8_t> chunk_buffer_;  // one chunk + its checksum, shared by every stream()
};

// Reads a dataset written chunk by chunk (chunk_dims' form, Fletcher-32 its only filter) piece by piece
// in row-major order, verifying each chunk's checksum itself (H5Dread_chunk: the stored bytes, no copy by
// HDF5); a mismatch is a CorruptError naming the file, the dataset and the chunk. `usable` says whether the
// dataset has that form (else read it whole with read_tensor).
class ChunkReader {
 public:
  ChunkReader(hid_t file, const std::string& path, const std::string& where, std::vector<uint8_t>* buffer);
  bool usable() const { return usable_; }
  uint64_t next_elems() const;  // elements of the next piece; 0 at the end
  const uint8_t* next();        // reads and verifies the next piece; its bytes stay valid until the next call

 private:
  Handle ds_;
  std::vector<hsize_t> dims_, chunk_;
  size_t itemsize_ = 0, split_ = 0;
  uint64_t inner_ = 1, done_ = 0, numel_ = 1;
  std::vector<uint8_t>* buffer_;
  std::string where_;
  bool usable_ = false;
};

}  // namespace qvl::h5
