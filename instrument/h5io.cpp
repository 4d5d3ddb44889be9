#include "instrument/h5io.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

namespace qvl::h5 {
namespace fs = std::filesystem;

namespace {

// HDF5 prints its own error stack by default; we report one clear line instead.
void quiet() {
  static bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

bool mentions_checksum(const std::string& stack) {
  std::string lower = stack;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  return lower.find("checksum") != std::string::npos;
}

// An HDF5 call failed: a CorruptError when HDF5 says a checksum did not match (a damaged object header,
// group or superblock of a checksummed file), else an Error.
[[noreturn]] void fail(const std::string& what) {
  const std::string stack = take_error_stack();
  if (mentions_checksum(stack)) throw CorruptError(what + ": the file is corrupt (HDF5: " + stack + ")");
  throw Error(what);
}

// After a negative answer from a query (H5Lexists, H5Aexists, H5Oopen): a checksum failure is corruption,
// anything else means "no".
void throw_if_corrupt(const std::string& what) {
  const std::string stack = take_error_stack();
  if (mentions_checksum(stack)) throw CorruptError(what + ": the file is corrupt (HDF5: " + stack + ")");
}

void check(herr_t rc, const std::string& what) {
  if (rc < 0) fail(what);
}

hid_t check_id(hid_t id, const std::string& what) {
  if (id < 0) fail(what);
  return id;
}

// The creation properties of a new dataset (see "Integrity" in h5io.h): compact when scalar or empty, else
// chunked (chunk_dims) with [shuffle, gzip] and Fletcher-32 last.
Handle dataset_dcpl(const std::vector<hsize_t>& dims, size_t itemsize, int gzip_level) {
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  uint64_t numel = 1;
  for (hsize_t d : dims) numel *= d;
  if (dims.empty() || numel == 0) {
    check(H5Pset_layout(dcpl.id(), H5D_COMPACT), "set a compact layout");
    return dcpl;
  }
  const bool gzip = gzip_level > 0 && numel >= 256;
  const std::vector<hsize_t> chunk = chunk_dims(dims, itemsize, gzip ? kGzipChunkBytes : kChunkBytes);
  check(H5Pset_chunk(dcpl.id(), static_cast<int>(chunk.size()), chunk.data()), "set the chunk dims");
  if (gzip) {
    check(H5Pset_shuffle(dcpl.id()), "set the shuffle filter");
    check(H5Pset_deflate(dcpl.id(), static_cast<unsigned>(gzip_level)), "set the gzip filter");
  }
  check(H5Pset_fletcher32(dcpl.id()), "set the Fletcher-32 filter");
  return dcpl;
}

// The dim that chunks of chunk_dims' form cut: chunk[i] == 1 before it and == dims[i] after it. False if
// `chunk` is not of that form.
bool chunk_split(const std::vector<hsize_t>& dims, const std::vector<hsize_t>& chunk, size_t* split) {
  if (dims.empty() || chunk.size() != dims.size()) return false;
  size_t k = dims.size() - 1;
  while (k > 0 && chunk[k] == dims[k]) --k;
  for (size_t i = 0; i < k; ++i)
    if (chunk[i] != 1) return false;
  if (chunk[k] == 0 || chunk[k] > dims[k]) return false;
  *split = k;
  return true;
}

// The chunk that holds row-major element `at` (a chunk start), as coordinates, and its elements in the
// dataset (fewer than a full chunk at the end of dim `split`).
uint64_t piece_at(const std::vector<hsize_t>& dims, const std::vector<hsize_t>& chunk, size_t split,
                  uint64_t inner, uint64_t at, std::vector<hsize_t>* offset) {
  const uint64_t span = dims[split] * inner;  // elements of one index of the dims before split
  uint64_t slab = at / span;
  const uint64_t b = (at % span) / inner;
  offset->assign(dims.size(), 0);
  (*offset)[split] = b;
  for (size_t i = split; i-- > 0;) {
    (*offset)[i] = slab % dims[i];
    slab /= dims[i];
  }
  return std::min<uint64_t>(chunk[split], dims[split] - b) * inner;
}

std::string coords(const std::vector<hsize_t>& c) {
  std::string s = "[";
  for (size_t i = 0; i < c.size(); ++i) s += (i ? ", " : "") + std::to_string(c[i]);
  return s + "]";
}

struct DtypeInfo {
  std::string name;  // dtype_name(torch) (functional/value.h)
  at::ScalarType torch;
  hid_t (*file_type)();
  hid_t (*mem_type)();
};

hid_t t_f64() { return H5T_IEEE_F64LE; }
hid_t t_f32() { return H5T_IEEE_F32LE; }
hid_t t_u16() { return H5T_STD_U16LE; }
hid_t t_i64() { return H5T_STD_I64LE; }
hid_t t_i32() { return H5T_STD_I32LE; }
hid_t t_i16() { return H5T_STD_I16LE; }
hid_t t_i8() { return H5T_STD_I8LE; }
hid_t t_u8() { return H5T_STD_U8LE; }
hid_t n_f64() { return H5T_NATIVE_DOUBLE; }
hid_t n_f32() { return H5T_NATIVE_FLOAT; }
hid_t n_u16() { return H5T_NATIVE_UINT16; }
hid_t n_i64() { return H5T_NATIVE_INT64; }
hid_t n_i32() { return H5T_NATIVE_INT32; }
hid_t n_i16() { return H5T_NATIVE_INT16; }
hid_t n_i8() { return H5T_NATIVE_INT8; }
hid_t n_u8() { return H5T_NATIVE_UINT8; }

// The dtypes qvl reads and writes. float16 and bfloat16 travel as uint16 bits; bool as uint8.
const std::vector<DtypeInfo>& dtypes() {
  static const std::vector<DtypeInfo> table = [] {
    const std::map<at::ScalarType, std::pair<hid_t (*)(), hid_t (*)()>> types = {
        {at::kDouble, {t_f64, n_f64}}, {at::kFloat, {t_f32, n_f32}}, {at::kHalf, {t_u16, n_u16}},
        {at::kBFloat16, {t_u16, n_u16}}, {at::kLong, {t_i64, n_i64}}, {at::kInt, {t_i32, n_i32}},
        {at::kShort, {t_i16, n_i16}}, {at::kChar, {t_i8, n_i8}}, {at::kByte, {t_u8, n_u8}}, {at::kBool, {t_u8, n_u8}},
        // FP8 checkpoints (safetensors F8_E4M3 / F8_E5M2): the bits as uint8, like bfloat16 as uint16.
        {at::kFloat8_e4m3fn, {t_u8, n_u8}}, {at::kFloat8_e5m2, {t_u8, n_u8}},
    };
    std::vector<DtypeInfo> out;
    for (at::ScalarType t : named_dtypes()) {
      const auto& [file, mem] = types.at(t);
      out.push_back({dtype_name(t), t, file, mem});
    }
    return out;
  }();
  return table;
}

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : dtypes())
    if (name == d.name) return &d;
  return nullptr;
}

std::string supported_dtypes() {
  std::string s;
  for (const auto& d : dtypes()) s += (s.empty() ? "" : ", ") + d.name;
  return s;
}

// Infers the torch dtype of a dataset written without a `dtype` attribute (a foreign file).
std::string infer_dtype(H5T_class_t cls, size_t size, H5T_sign_t sign) {
  if (cls == H5T_FLOAT) return size == 8 ? "float64" : size == 4 ? "float32" : size == 2 ? "float16" : "";
  if (cls == H5T_INTEGER) {
    if (sign == H5T_SGN_NONE) return size == 1 ? "uint8" : "";
    return size == 8 ? "int64" : size == 4 ? "int32" : size == 2 ? "int16" : size == 1 ? "int8" : "";
  }
  if (cls == H5T_ENUM && size == 1) return "bool";  // h5py's bool
  return "";
}

std::string class_name(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_ENUM: return "enum";
    case H5T_COMPOUND: return "compound";
    default: return "class " + std::to_string(static_cast<int>(c));
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------------
Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    close_ = o.close_;
    o.id_ = -1;
  }
  return *this;
}

void Handle::reset() {
  if (id_ >= 0 && close_) close_(id_);
  id_ = -1;
}

File open_read(const std::string& path) {
  quiet();
  if (!fs::exists(path)) throw Error("'" + path + "': no such file");
  if (fs::is_directory(path)) throw Error("'" + path + "': is a directory, not an HDF5 file");
#if H5_VERSION_GE(1, 12, 0)
  const htri_t is_h5 = H5Fis_accessible(path.c_str(), H5P_DEFAULT);
#else
  const htri_t is_h5 = H5Fis_hdf5(path.c_str());
#endif
  if (is_h5 <= 0) {
    throw Error("'" + path + "': not an HDF5 file, or corrupt (" + std::to_string(fs::file_size(path)) + " bytes)");
  }
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) fail("'" + path + "': cannot open as HDF5 (corrupt or truncated?)");
  return File{Handle(id, H5Fclose), path};
}

File open_write(const std::string& path) {
  quiet();
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (id < 0) fail("'" + path + "': cannot open as HDF5 for writing");
  return File{Handle(id, H5Fclose), path};
}

File create_truncate(const std::string& path) {
  quiet();
  Handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_link_creation_order(fcpl.id(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
  // The HDF5 1.8 format: checksummed object headers (so compact scalars are covered too), readable by
  // HDF5 1.8 and later.
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  check(H5Pset_libver_bounds(fapl.id(), H5F_LIBVER_V18, H5F_LIBVER_V18), "'" + path + "': set the file format");
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.id(), fapl.id());
  if (id < 0) throw Error("'" + path + "': cannot create HDF5 file");
  return File{Handle(id, H5Fclose), path};
}

// ------------------------------------------------------------------------------------------------------
std::string take_error_stack() {
  const hid_t st = H5Eget_current_stack();
  if (st < 0) return "";
  std::string out;
  auto each = [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
    auto* text = static_cast<std::string*>(data);
    const std::string desc = e->desc ? e->desc : "";
    if (!desc.empty() && text->find(desc) == std::string::npos) *text += (text->empty() ? "" : "; ") + desc;
    return 0;
  };
  H5Ewalk2(st, H5E_WALK_DOWNWARD, each, &out);
  H5Eclose_stack(st);
  return out;
}

std::vector<hsize_t> chunk_dims(const std::vector<hsize_t>& dims, size_t itemsize, uint64_t limit) {
  std::vector<hsize_t> chunk(dims.size(), 1);
  uint64_t inner = itemsize;  // bytes of the trailing dims taken whole so far (<= limit)
  for (size_t k = dims.size(); k-- > 0;) {
    if (dims[k] <= limit / inner) {
      chunk[k] = dims[k];
      inner *= dims[k];
    } else {
      chunk[k] = std::max<uint64_t>(1, limit / inner);
      break;
    }
  }
  return chunk;
}

uint32_t fletcher32(const uint8_t* data, size_t n) {
  // HDF5 adds word by word: sum1 += w, sum2 += sum1, in uint32, and folds both sums to 17 bits after each
  // block of 360 words. Over a block of k words that is sum1 += sum(w_i), sum2 += k*sum1 + sum((k-i)*w_i),
  // the same values modulo 2^32 whatever the order of the additions; written so the compiler vectorises
  // the two sums (twice as fast as the word-by-word loop).
  uint32_t sum1 = 0, sum2 = 0;
  for (size_t words = n / 2; words > 0;) {
    const uint32_t k = static_cast<uint32_t>(std::min<size_t>(words, 360));
    words -= k;
    uint32_t a = 0, b = 0;
    for (uint32_t i = 0; i < k; ++i) {
      const uint32_t w = static_cast<uint32_t>(data[2 * i]) << 8 | data[2 * i + 1];  // big-endian words
      a += w;
      b += (k - i) * w;
    }
    data += 2 * static_cast<size_t>(k);
    sum2 += k * sum1 + b;
    sum1 += a;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  if (n % 2) {  // an odd last byte is the high half of a word
    sum1 += static_cast<uint32_t>(data[0]) << 8;
    sum2 += sum1;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  sum1 = (sum1 & 0xffff) + (sum1 >> 16);
  sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  return sum2 << 16 | sum1;
}

bool note_if_unchecksummed(hid_t file, const std::string& path) {
  if (has_attr(file, "checksums") && attr_str(file, "checksums", "'" + path + "'") == kChecksums) return true;
  static std::mutex m;
  static std::set<std::string> noted;
  std::error_code ec;
  const std::string key = fs::weakly_canonical(path, ec).string();
  std::lock_guard<std::mutex> lock(m);
  if (noted.insert(ec ? path : key).second) {
    std::fprintf(stderr,
                 "qvl: note: '%s' carries no checksums (written before qvl checksummed its files): damage "
                 "inside it cannot be detected; write it again to add them\n",
                 path.c_str());
  }
  return false;
}

namespace {
// The version of an object's header: 2 and later carry a checksum.
int header_version(hid_t obj) {
#if H5_VERSION_GE(1, 12, 0)
  H5O_native_info_t info;
  if (H5Oget_native_info(obj, &info, H5O_NATIVE_INFO_HDR) < 0) return -1;
#else
  H5O_info_t info;
  if (H5Oget_info2(obj, &info, H5O_INFO_HDR) < 0) return -1;
#endif
  return static_cast<int>(info.hdr.version);
}
}  // namespace

std::vector<std::string> unchecksummed_datasets(const std::string& path) {
  File f = open_read(path);
  std::vector<std::string> out;
  std::function<void(hid_t, const std::string&)> walk = [&](hid_t g, const std::string& prefix) {
    for (const auto& name : children(g)) {
      const std::string here = prefix + "/" + name;
      if (is_group(g, name)) {
        Handle sub = open_group(g, name, "'" + path + "'");
        walk(sub.id(), here);
        continue;
      }
      Handle ds(check_id(H5Dopen2(g, name.c_str(), H5P_DEFAULT), "'" + path + "':" + here + ": cannot open"),
                H5Dclose);
      Handle dcpl(H5Dget_create_plist(ds.id()), H5Pclose);
      bool covered = false;
      if (H5Pget_layout(dcpl.id()) == H5D_CHUNKED) {
        const int n = H5Pget_nfilters(dcpl.id());
        unsigned flags = 0;
        size_t nelmts = 0;
        covered = n > 0 && H5Pget_filter2(dcpl.id(), static_cast<unsigned>(n - 1), &flags, &nelmts, nullptr, 0,
                                          nullptr, nullptr) == H5Z_FILTER_FLETCHER32;
      } else if (H5Pget_layout(dcpl.id()) == H5D_COMPACT) {
        covered = header_version(ds.id()) >= 2;
      }
      if (!covered) out.push_back(here);
    }
  };
  walk(f.id(), "");
  return out;
}

AtomicPath::AtomicPath(std::string final_path) : final_(std::move(final_path)) {
  fs::path p(final_);
  tmp_ = (p.parent_path() / ("." + p.filename().string() + ".tmp-" + std::to_string(::getpid()))).string();
}

AtomicPath::~AtomicPath() {
  if (!done_) {
    std::error_code ec;
    fs::remove(tmp_, ec);
  }
}

void AtomicPath::commit(bool durable) {
  auto sync = [](const std::string& p, int flags) {
    const int fd = ::open(p.c_str(), flags | O_CLOEXEC);
    const bool ok = fd >= 0 && ::fsync(fd) == 0;
    if (fd >= 0) ::close(fd);
    if (!ok) throw Error("'" + p + "': fsync failed");
  };
  if (durable) sync(tmp_, O_RDONLY);
  std::error_code ec;
  fs::rename(tmp_, final_, ec);
  if (ec) throw Error("cannot rename '" + tmp_ + "' to '" + final_ + "': " + ec.message());
  done_ = true;
  if (durable) {
    const std::string dir = fs::path(final_).parent_path().string();
    sync(dir.empty() ? "." : dir, O_RDONLY | O_DIRECTORY);
  }
}

bool exists(hid_t loc, const std::string& name) {
  quiet();
  const htri_t rc = H5Lexists(loc, name.c_str(), H5P_DEFAULT);
  if (rc < 0) throw_if_corrupt("'" + name + "'");
  return rc > 0;
}

// Only APIs that are the same in HDF5 1.10 (Debian 12) and 1.12+.
bool is_group(hid_t loc, const std::string& name) {
  hid_t o = H5Oopen(loc, name.c_str(), H5P_DEFAULT);
  if (o < 0) throw_if_corrupt("'" + name + "': cannot open the object");
  if (o < 0) return false;
  const bool g = H5Iget_type(o) == H5I_GROUP;
  H5Oclose(o);
  return g;
}

std::vector<std::string> children(hid_t group) {
  H5G_info_t info;
  check(H5Gget_info(group, &info), "cannot list group members");
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    ssize_t n = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    check(static_cast<herr_t>(n < 0 ? -1 : 0), "cannot read a group member name");
    std::string s(static_cast<size_t>(n) + 1, '\0');
    H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, s.data(), s.size(), H5P_DEFAULT);
    s.resize(static_cast<size_t>(n));
    names.push_back(std::move(s));
  }
  return names;
}

Handle open_group(hid_t loc, const std::string& name, const std::string& where) {
  if (!exists(loc, name)) throw Error(where + ": missing group '" + name + "'");
  hid_t g = H5Gopen2(loc, name.c_str(), H5P_DEFAULT);
  if (g < 0) fail(where + ": '" + name + "' is not a group");
  return Handle(g, H5Gclose);
}

Handle make_group(hid_t loc, const std::string& name) {
  Handle gcpl(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
  H5Pset_link_creation_order(gcpl.id(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
  return Handle(check_id(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, gcpl.id(), H5P_DEFAULT),
                         "cannot create group '" + name + "'"),
                H5Gclose);
}

bool has_attr(hid_t obj, const std::string& name) {
  const htri_t rc = H5Aexists(obj, name.c_str());
  if (rc < 0) throw_if_corrupt("attribute '" + name + "'");
  return rc > 0;
}

std::string attr_str(hid_t obj, const std::string& name, const std::string& where) {
  if (!has_attr(obj, name)) throw Error(where + ": missing attribute '" + name + "'");
  Handle a(check_id(H5Aopen(obj, name.c_str(), H5P_DEFAULT), where + ": cannot open attribute '" + name + "'"),
           H5Aclose);
  Handle t(H5Aget_type(a.id()), H5Tclose);
  if (H5Tget_class(t.id()) != H5T_STRING) {
    throw Error(where + ": attribute '" + name + "' is not a string (" + class_name(H5Tget_class(t.id())) + ")");
  }
  if (H5Tis_variable_str(t.id()) > 0) {
    Handle mt(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mt.id(), H5T_VARIABLE);
    H5Tset_cset(mt.id(), H5Tget_cset(t.id()));
    char* buf = nullptr;
    check(H5Aread(a.id(), mt.id(), &buf), where + ": cannot read attribute '" + name + "'");
    std::string s = buf ? buf : "";
    H5free_memory(buf);
    return s;
  }
  size_t n = H5Tget_size(t.id());
  std::string s(n, '\0');
  Handle mt(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mt.id(), n);
  check(H5Aread(a.id(), mt.id(), s.data()), where + ": cannot read attribute '" + name + "'");
  s.erase(std::find(s.begin(), s.end(), '\0'), s.end());
  return s;
}

int64_t attr_int(hid_t obj, const std::string& name, const std::string& where) {
  if (!has_attr(obj, name)) throw Error(where + ": missing attribute '" + name + "'");
  Handle a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
  Handle t(H5Aget_type(a.id()), H5Tclose);
  if (H5Tget_class(t.id()) != H5T_INTEGER) throw Error(where + ": attribute '" + name + "' is not an integer");
  int64_t v = 0;
  check(H5Aread(a.id(), H5T_NATIVE_INT64, &v), where + ": cannot read attribute '" + name + "'");
  return v;
}

void set_attr(hid_t obj, const std::string& name, const std::string& value) {
  if (has_attr(obj, name)) H5Adelete(obj, name.c_str());
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t.id(), H5T_VARIABLE);
  H5Tset_cset(t.id(), H5T_CSET_UTF8);
  Handle s(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(check_id(H5Acreate2(obj, name.c_str(), t.id(), s.id(), H5P_DEFAULT, H5P_DEFAULT),
                    "cannot create attribute '" + name + "'"),
           H5Aclose);
  const char* p = value.c_str();
  check(H5Awrite(a.id(), t.id(), &p), "cannot write attribute '" + name + "'");
}

void set_attr(hid_t obj, const std::string& name, int64_t value) {
  if (has_attr(obj, name)) H5Adelete(obj, name.c_str());
  Handle s(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(check_id(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, s.id(), H5P_DEFAULT, H5P_DEFAULT),
                    "cannot create attribute '" + name + "'"),
           H5Aclose);
  check(H5Awrite(a.id(), H5T_NATIVE_INT64, &value), "cannot write attribute '" + name + "'");
}

// ------------------------------------------------------------------------------------------------------
at::Tensor read_tensor(hid_t loc, const std::string& name, const std::string& where, bool dtype_from_attr) {
  hid_t ds_id = H5Dopen2(loc, name.c_str(), H5P_DEFAULT);
  if (ds_id < 0) fail(where + ": no dataset '" + name + "'");
  Handle ds(ds_id, H5Dclose);
  Handle ft(H5Dget_type(ds.id()), H5Tclose);
  const H5T_class_t cls = H5Tget_class(ft.id());
  const size_t size = H5Tget_size(ft.id());
  const H5T_sign_t sign = cls == H5T_INTEGER ? H5Tget_sign(ft.id()) : H5T_SGN_NONE;

  std::string dtype = dtype_from_attr && has_attr(ds.id(), "dtype") ? attr_str(ds.id(), "dtype", where)
                                                                    : infer_dtype(cls, size, sign);
  const DtypeInfo* info = find_dtype(dtype);
  if (!info) {
    throw Error(where + ": unknown dtype '" + (dtype.empty() ? class_name(cls) + std::to_string(size * 8) : dtype) +
                "' (supported: " + supported_dtypes() + ")");
  }
  const size_t want = at::elementSize(info->torch);
  const bool cls_ok = (cls == H5T_FLOAT && (dtype == "float64" || dtype == "float32" || dtype == "float16")) ||
                      (cls == H5T_INTEGER && dtype != "float64" && dtype != "float32") ||
                      (cls == H5T_ENUM && dtype == "bool");
  if (!cls_ok || size != want) {
    throw Error(where + ": dtype '" + dtype + "' does not match the stored " + class_name(cls) + " of " +
                std::to_string(size) + " bytes (expected " + std::to_string(want) + " bytes)");
  }

  Handle space(H5Dget_space(ds.id()), H5Sclose);
  const int nd = H5Sget_simple_extent_ndims(space.id());
  std::vector<hsize_t> dims(std::max(nd, 0));
  if (nd > 0) H5Sget_simple_extent_dims(space.id(), dims.data(), nullptr);
  std::vector<int64_t> shape(dims.begin(), dims.end());
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(info->torch));
  if (t.numel() == 0) return t;

  // 16-bit floats written by h5py and h5py's enum bools: read the raw little-endian bytes.
  Handle mem_copy;
  hid_t mem = info->mem_type();
  if ((cls == H5T_FLOAT && size == 2) || cls == H5T_ENUM) {
    if (H5Tget_order(ft.id()) != H5T_ORDER_LE) throw Error(where + ": big-endian 16-bit data is not supported");
    mem_copy = Handle(H5Tcopy(ft.id()), H5Tclose);
    mem = mem_copy.id();
  }
  if (H5Dread(ds.id(), mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()) < 0) {
    const std::string stack = take_error_stack();
    if (mentions_checksum(stack)) {
      throw CorruptError(where + ": corrupt: the data of dataset '" + name +
                         "' fails its Fletcher-32 checksum (the file was damaged after it was written)");
    }
    throw Error(where + ": cannot read dataset '" + name + "' (corrupt data?)");
  }
  if (info->torch == at::kBool) t = t.view(at::kByte).ne(0);  // any non-zero byte is true
  return t;
}

void write_tensor(hid_t loc, const std::string& name, const at::Tensor& t_in, int gzip_level) {
  at::Tensor t = t_in.detach().to(at::kCPU).contiguous();
  const std::string dtype = dtype_name(t.scalar_type());
  const DtypeInfo* info = find_dtype(dtype);
  if (!info) throw Error("write '" + name + "': unsupported dtype " + dtype + " (supported: " + supported_dtypes() + ")");
  std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
  Handle space(t.dim() == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(t.dim(), dims.data(), nullptr), H5Sclose);
  Handle dcpl = dataset_dcpl(dims, t.element_size(), gzip_level);
  Handle ds(check_id(H5Dcreate2(loc, name.c_str(), info->file_type(), space.id(), H5P_DEFAULT, dcpl.id(), H5P_DEFAULT),
                     "cannot create dataset '" + name + "'"),
            H5Dclose);
  if (t.numel() > 0) {
    check(H5Dwrite(ds.id(), info->mem_type(), H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()),
          "cannot write dataset '" + name + "'");
  }
  set_attr(ds.id(), "kind", std::string("tensor"));
  set_attr(ds.id(), "dtype", dtype);
}

// ------------------------------------------------------------------------------------------------------
Value read_value(hid_t loc, const std::string& name, const std::string& where) {
  const std::string here = where + "/" + name;
  if (!exists(loc, name)) throw Error(here + ": missing");
  if (!is_group(loc, name)) {
    Handle ds(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose);
    std::string kind = has_attr(ds.id(), "kind") ? attr_str(ds.id(), "kind", here) : "tensor";
    ds.reset();
    at::Tensor t = read_tensor(loc, name, here);
    if (kind == "tensor") return Value::of(t);
    if (kind == "int") return Value::of_int(t.item<int64_t>());
    if (kind == "float") return Value::of_float(t.item<double>());
    if (kind == "bool") return Value::of_bool(t.item<int64_t>() != 0);
    throw Error(here + ": unknown dataset kind '" + kind + "' (expected tensor, int, float or bool)");
  }
  Handle g = open_group(loc, name, where);
  std::string kind = attr_str(g.id(), "kind", here);
  if (kind == "none") return Value::none();
  if (kind == "str") return Value::of_str(attr_str(g.id(), "value", here));
  if (kind == "object") {
    Value v;
    v.kind = Value::Kind::Object;
    v.s = has_attr(g.id(), "type") ? attr_str(g.id(), "type", here) : "";
    return v;
  }
  if (kind == "tuple" || kind == "list") {
    Value v;
    v.kind = kind == "tuple" ? Value::Kind::Tuple : Value::Kind::List;
    const int64_t n = attr_int(g.id(), "length", here);
    for (int64_t i = 0; i < n; ++i) v.items.push_back(read_value(g.id(), std::to_string(i), here));
    return v;
  }
  if (kind == "dict") {
    Value v;
    v.kind = Value::Kind::Dict;
    v.s = has_attr(g.id(), "type") ? attr_str(g.id(), "type", here) : "";
    nlohmann::json keys;
    try {
      keys = nlohmann::json::parse(attr_str(g.id(), "keys", here));
    } catch (const nlohmann::json::exception& e) {
      throw Error(here + ": attribute 'keys' is not JSON: " + e.what());
    }
    for (const auto& k : keys) {
      std::string key = k.get<std::string>();
      std::string link = key;
      std::replace(link.begin(), link.end(), '/', '|');
      v.keys.push_back(key);
      v.items.push_back(read_value(g.id(), link, here));
    }
    return v;
  }
  throw Error(here + ": unknown group kind '" + kind + "' (expected none, str, object, tuple, list or dict)");
}

void write_value(hid_t loc, const std::string& name, const Value& v) {
  using K = Value::Kind;
  switch (v.kind) {
    case K::Tensor: write_tensor(loc, name, v.tensor); return;
    case K::Int:
    case K::Float:
    case K::Bool: {
      at::Tensor t = v.kind == K::Int     ? at::scalar_tensor(v.i, at::kLong)
                     : v.kind == K::Float ? at::scalar_tensor(v.f, at::kDouble)
                                          : at::scalar_tensor(static_cast<int64_t>(v.b), at::kByte);
      write_tensor(loc, name, t, 0);
      Handle ds(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose);
      set_attr(ds.id(), "kind", std::string(v.kind == K::Int ? "int" : v.kind == K::Float ? "float" : "bool"));
      return;
    }
    default: break;
  }
  Handle g = make_group(loc, name);
  switch (v.kind) {
    case K::None: set_attr(g.id(), "kind", std::string("none")); break;
    case K::Str:
      set_attr(g.id(), "kind", std::string("str"));
      set_attr(g.id(), "value", v.s);
      break;
    case K::Object:
      set_attr(g.id(), "kind", std::string("object"));
      set_attr(g.id(), "type", v.s);
      break;
    case K::Tuple:
    case K::List:
      set_attr(g.id(), "kind", std::string(v.kind == K::Tuple ? "tuple" : "list"));
      set_attr(g.id(), "length", static_cast<int64_t>(v.items.size()));
      for (size_t i = 0; i < v.items.size(); ++i) write_value(g.id(), std::to_string(i), v.items[i]);
      break;
    case K::Dict: {
      set_attr(g.id(), "kind", std::string("dict"));
      if (!v.s.empty()) set_attr(g.id(), "type", v.s);
      set_attr(g.id(), "keys", nlohmann::json(v.keys).dump());
      for (size_t i = 0; i < v.items.size(); ++i) {
        std::string link = v.keys[i];
        std::replace(link.begin(), link.end(), '/', '|');
        write_value(g.id(), link, v.items[i]);
      }
      break;
    }
    default: break;
  }
}

// ------------------------------------------------------------------------------------------------------
WeightsFile read_weights(const std::string& path) {
  File f = open_read(path);
  const std::string where = "'" + path + "'";
  if (!has_attr(f.id(), "format")) throw Error(where + ": not a qvl weights file (no 'format' attribute)");
  const std::string format = attr_str(f.id(), "format", where);
  if (format != "qvl.weights") {
    throw Error(where + ": not a qvl weights file (format = '" + format + "', expected 'qvl.weights')");
  }
  WeightsFile out;
  // Every string root attribute.
  auto cb = [](hid_t loc, const char* name, const H5A_info_t*, void* data) -> herr_t {
    Handle a(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
    Handle t(H5Aget_type(a.id()), H5Tclose);
    if (H5Tget_class(t.id()) == H5T_STRING) {
      auto* m = static_cast<std::map<std::string, std::string>*>(data);
      (*m)[name] = attr_str(loc, name, "root");
    }
    return 0;
  };
  hsize_t idx = 0;
  H5Aiterate2(f.id(), H5_INDEX_NAME, H5_ITER_INC, &idx, cb, &out.attrs);
  note_if_unchecksummed(f.id(), path);
  if (!out.attrs.count("config")) throw Error(where + ": missing root attribute 'config' (the HF config.json)");
  out.config_json = out.attrs.at("config");

  std::function<void(hid_t, const std::string&)> walk = [&](hid_t g, const std::string& prefix) {
    for (const auto& name : children(g)) {
      const std::string dotted = join_path(prefix, name);
      if (is_group(g, name)) {
        Handle sub = open_group(g, name, where);
        walk(sub.id(), dotted);
      } else {
        out.weights.set(dotted, read_tensor(g, name, where + ":/" + dotted));
      }
    }
  };
  walk(f.id(), "");
  return out;
}

WeightsWriter::WeightsWriter(const std::string& path, const std::map<std::string, std::string>& attrs,
                             int gzip_level)
    : out_(path), file_(create_truncate(out_.tmp())), gzip_(gzip_level) {
  set_attr(file_.id(), "format", std::string("qvl.weights"));
  set_attr(file_.id(), "format_version", static_cast<int64_t>(2));
  set_attr(file_.id(), "checksums", std::string(kChecksums));  // see "Integrity" in h5io.h
  for (const auto& [k, v] : attrs) set_attr(file_.id(), k, v);
}

hid_t WeightsWriter::parent_of_new(const std::string& dotted, std::vector<Handle>& groups) {
  auto parts = split_dotted(dotted);
  hid_t cur = file_.id();
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    groups.push_back(exists(cur, parts[i]) ? open_group(cur, parts[i], file_.path) : make_group(cur, parts[i]));
    cur = groups.back().id();
  }
  if (exists(cur, parts.back())) throw Error("'" + file_.path + "': tensor '" + dotted + "' written twice");
  return cur;
}

void WeightsWriter::add(const std::string& dotted, const at::Tensor& t) {
  std::vector<Handle> groups;
  hid_t cur = parent_of_new(dotted, groups);
  write_tensor(cur, split_dotted(dotted).back(), t, gzip_);
}

DatasetStream WeightsWriter::stream(const std::string& dotted, at::ScalarType dtype, at::IntArrayRef shape) {
  if (gzip_ > 0) throw Error("'" + file_.path + "': stream() writes raw chunks, which gzip cannot take");
  const DtypeInfo* info = find_dtype(dtype_name(dtype));
  if (!info) throw Error("stream '" + dotted + "': unsupported dtype " + dtype_name(dtype));
  auto parts = split_dotted(dotted);
  std::vector<Handle> groups;
  hid_t cur = parent_of_new(dotted, groups);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
               H5Sclose);
  const size_t itemsize = at::elementSize(dtype);
  Handle dcpl = dataset_dcpl(dims, itemsize, 0);
  Handle ds(check_id(H5Dcreate2(cur, parts.back().c_str(), info->file_type(), space.id(), H5P_DEFAULT, dcpl.id(), H5P_DEFAULT),
                     "cannot create dataset '" + dotted + "'"),
            H5Dclose);
  set_attr(ds.id(), "kind", std::string("tensor"));
  set_attr(ds.id(), "dtype", std::string(info->name));
  return DatasetStream(std::move(ds), dims, itemsize, &chunk_buffer_, "'" + file_.path + "':/" + dotted);
}

DatasetStream::DatasetStream(Handle ds, std::vector<hsize_t> dims, size_t itemsize, std::vector<uint8_t>* buffer,
                             std::string where)
    : ds_(std::move(ds)), dims_(std::move(dims)), itemsize_(itemsize), buffer_(buffer), where_(std::move(where)) {
  for (hsize_t d : dims_) numel_ *= d;
  uint64_t chunk_bytes = itemsize_;  // a scalar: one element, written compact
  if (!dims_.empty() && numel_ > 0) {
    chunk_ = chunk_dims(dims_, itemsize_, kChunkBytes);
    chunk_split(dims_, chunk_, &split_);
    for (size_t i = split_ + 1; i < dims_.size(); ++i) inner_ *= dims_[i];
    chunk_bytes = chunk_[split_] * inner_ * itemsize_;
  }
  if (buffer_->size() < chunk_bytes + 4) buffer_->resize(chunk_bytes + 4);
}

uint64_t DatasetStream::next_elems() const {
  if (done_ >= numel_) return 0;
  if (dims_.empty()) return 1;
  std::vector<hsize_t> offset;
  return piece_at(dims_, chunk_, split_, inner_, done_, &offset);
}

void DatasetStream::put() {
  if (done_ >= numel_) throw Error(where_ + ": more data written than the dataset holds");
  if (dims_.empty()) {  // a scalar: compact, in its (checksummed) object header
    Handle type(H5Dget_type(ds_.id()), H5Tclose);
    check(H5Dwrite(ds_.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer_->data()), where_ + ": write failed");
    done_ = 1;
    return;
  }
  std::vector<hsize_t> offset;
  const uint64_t elems = piece_at(dims_, chunk_, split_, inner_, done_, &offset);
  const uint64_t full = chunk_[split_] * inner_ * itemsize_, used = elems * itemsize_;
  uint8_t* buf = buffer_->data();
  if (used < full) std::memset(buf + used, 0, full - used);  // an edge chunk is stored full size
  const uint32_t sum = fletcher32(buf, full);
  for (int i = 0; i < 4; ++i) buf[full + i] = static_cast<uint8_t>(sum >> (8 * i));  // little-endian, as HDF5
  check(H5Dwrite_chunk(ds_.id(), H5P_DEFAULT, 0, offset.data(), full + 4, buf),
        where_ + ": cannot write the chunk at " + coords(offset));
  done_ += elems;
}

ChunkReader::ChunkReader(hid_t file, const std::string& path, const std::string& where, std::vector<uint8_t>* buffer)
    : buffer_(buffer), where_(where) {
  hid_t id = H5Dopen2(file, path.c_str(), H5P_DEFAULT);
  if (id < 0) fail(where + ": cannot open the dataset");
  ds_ = Handle(id, H5Dclose);
  Handle dcpl(H5Dget_create_plist(ds_.id()), H5Pclose);
  Handle type(H5Dget_type(ds_.id()), H5Tclose);
  Handle space(H5Dget_space(ds_.id()), H5Sclose);
  itemsize_ = H5Tget_size(type.id());
  const int nd = H5Sget_simple_extent_ndims(space.id());
  if (nd <= 0 || H5Pget_layout(dcpl.id()) != H5D_CHUNKED || H5Pget_nfilters(dcpl.id()) != 1) return;
  unsigned flags = 0;
  size_t nelmts = 0;
  if (H5Pget_filter2(dcpl.id(), 0, &flags, &nelmts, nullptr, 0, nullptr, nullptr) != H5Z_FILTER_FLETCHER32) return;
  if (itemsize_ > 1 && H5Tget_order(type.id()) != H5T_ORDER_LE) return;
  dims_.resize(static_cast<size_t>(nd));
  chunk_.resize(static_cast<size_t>(nd));
  H5Sget_simple_extent_dims(space.id(), dims_.data(), nullptr);
  if (H5Pget_chunk(dcpl.id(), nd, chunk_.data()) != nd || !chunk_split(dims_, chunk_, &split_)) return;
  for (hsize_t d : dims_) numel_ *= d;
  for (size_t i = split_ + 1; i < dims_.size(); ++i) inner_ *= dims_[i];
  const uint64_t full = chunk_[split_] * inner_ * itemsize_;
  if (buffer_->size() < full + 4) buffer_->resize(full + 4);
  usable_ = numel_ > 0;
}

uint64_t ChunkReader::next_elems() const {
  if (!usable_ || done_ >= numel_) return 0;
  std::vector<hsize_t> offset;
  return piece_at(dims_, chunk_, split_, inner_, done_, &offset);
}

const uint8_t* ChunkReader::next() {
  if (!usable_ || done_ >= numel_) throw Error(where_ + ": read past the end of the dataset");
  std::vector<hsize_t> offset;
  const uint64_t elems = piece_at(dims_, chunk_, split_, inner_, done_, &offset);
  const uint64_t full = chunk_[split_] * inner_ * itemsize_;
  hsize_t stored = 0;
  if (H5Dget_chunk_storage_size(ds_.id(), offset.data(), &stored) < 0)
    fail(where_ + ": the chunk at " + coords(offset) + " is missing");
  if (stored != full + 4) {
    throw CorruptError(where_ + ": corrupt: the chunk at " + coords(offset) + " holds " + std::to_string(stored) +
                       " bytes, expected " + std::to_string(full + 4));
  }
  uint32_t mask = 0;
  uint8_t* buf = buffer_->data();
  check(H5Dread_chunk(ds_.id(), H5P_DEFAULT, offset.data(), &mask, buf), where_ + ": cannot read the chunk at " + coords(offset));
  uint32_t want = 0;
  for (int i = 0; i < 4; ++i) want |= static_cast<uint32_t>(buf[full + i]) << (8 * i);
  if (mask != 0 || fletcher32(buf, full) != want) {
    throw CorruptError(where_ + ": corrupt: the chunk at " + coords(offset) +
                       " fails its Fletcher-32 checksum (the file was damaged after it was written)");
  }
  done_ += elems;
  return buf;
}

void WeightsWriter::set_root_attr(const std::string& name, const std::string& value) {
  h5::set_attr(file_.id(), name, value);
}

void WeightsWriter::commit(bool durable) {
  check(H5Fflush(file_.id(), H5F_SCOPE_GLOBAL), "'" + out_.tmp() + "': flush failed");
  file_.h.reset();
  out_.commit(durable);
}

void write_weights(const std::string& path, const Weights& w, const std::map<std::string, std::string>& attrs,
                   int gzip_level) {
  WeightsWriter out(path, attrs, gzip_level);
  for (const auto& [dotted, t] : w.flatten()) out.add(dotted, t);
  out.commit();
}

}  // namespace qvl::h5
