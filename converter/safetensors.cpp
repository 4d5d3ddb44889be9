#include "converter/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace qvl {

struct SafetensorsFile::Mapping {
  void* addr = MAP_FAILED;
  size_t len = 0;
  ~Mapping() {
    if (addr != MAP_FAILED && len) munmap(addr, len);
  }
};

namespace {
struct DtypePair {
  const char* name;
  at::ScalarType torch;
};
constexpr DtypePair kTorchDtypes[] = {
    {"F64", at::kDouble},
    {"F32", at::kFloat},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"I64", at::kLong},
    {"I32", at::kInt},
    {"I16", at::kShort},
    {"I8", at::kChar},
    {"U8", at::kByte},
    {"BOOL", at::kBool},
    {"F8_E4M3", at::kFloat8_e4m3fn},
    {"F8_E5M2", at::kFloat8_e5m2},
};

std::string errno_text() {
  return std::strerror(errno);
}
}  // namespace

at::ScalarType safetensors_dtype(const std::string& d, const std::string& where) {
  for (const auto& p : kTorchDtypes)
    if (d == p.name) return p.torch;
  throw std::runtime_error(where + ": unknown dtype '" + d +
                           "' (supported: " + supported_safetensors_dtypes() + ")");
}

std::string safetensors_dtype_name(at::ScalarType t) {
  for (const auto& p : kTorchDtypes)
    if (t == p.torch) return p.name;
  throw std::runtime_error(std::string("safetensors: cannot store dtype ") + c10::toString(t));
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  const std::string where = "'" + path + "'";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(where + ": cannot open (" + errno_text() + ")");
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(where + ": not a regular file");
  }
  f.size_ = static_cast<uint64_t>(st.st_size);
  if (f.size_ < 8) {  // too short to map usefully; the parser gives the message
    uint8_t head[8] = {};
    const ssize_t got = ::pread(fd, head, sizeof head, 0);
    ::close(fd);
    parse_safetensors_header(head, got < 0 ? 0 : static_cast<uint64_t>(got), where);
    throw std::runtime_error(where + ": truncated");  // not reached
  }
  f.map_ = std::make_shared<Mapping>();
  f.map_->addr = mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (f.map_->addr == MAP_FAILED) throw std::runtime_error(where + ": mmap failed (" + errno_text() + ")");
  f.map_->len = f.size_;

  SafetensorsHeader h = parse_safetensors_header(static_cast<const uint8_t*>(f.map_->addr), f.size_, where);
  f.data_start_ = h.data_start;
  f.metadata_ = std::move(h.metadata);
  f.entries_.reserve(h.entries.size());
  for (auto& he : h.entries) {
    SafetensorsEntry e;
    static_cast<SafetensorsHeaderEntry&>(e) = std::move(he);
    e.scalar_type = safetensors_dtype(e.dtype, where + ": tensor '" + e.name + "'");
    f.entries_.push_back(std::move(e));
  }
  for (size_t i = 0; i < f.entries_.size(); ++i) f.by_name_[f.entries_[i].name] = i;
  return f;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) throw std::runtime_error("'" + path_ + "': no tensor '" + name + "'");
  return entries_[it->second];
}

const uint8_t* SafetensorsFile::file_bytes() const {
  return static_cast<const uint8_t*>(map_->addr);
}

const uint8_t* SafetensorsFile::bytes(const SafetensorsEntry& e) const {
  return file_bytes() + data_start_ + e.begin;
}

at::Tensor SafetensorsFile::read(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.scalar_type));
  if (e.end > e.begin) std::memcpy(t.data_ptr(), bytes(e), e.end - e.begin);
  if (e.scalar_type == at::kBool) t = t.view(at::kByte).ne(0);
  return t;
}

at::Tensor SafetensorsFile::view(const SafetensorsEntry& e) const {
  if (e.scalar_type == at::kBool || e.end == e.begin) return read(e.name);
  std::shared_ptr<Mapping> keep = map_;
  return at::from_blob(
      const_cast<uint8_t*>(bytes(e)), e.shape, [keep](void*) {}, at::TensorOptions().dtype(e.scalar_type));
}

at::Tensor SafetensorsFile::read_as(const SafetensorsEntry& e, at::ScalarType dtype, uint64_t chunk_bytes) const {
  if (e.scalar_type == at::kBool) return read(e.name).to(dtype);
  at::Tensor out = at::empty(e.shape, at::TensorOptions().dtype(dtype));
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const int64_t item = static_cast<int64_t>(at::elementSize(e.scalar_type));
  const int64_t step = std::max<int64_t>(1, static_cast<int64_t>(chunk_bytes) / item);
  at::Tensor flat = out.view({-1});
  for (int64_t a = 0; a < numel; a += step) {
    const int64_t n = std::min(step, numel - a);
    SafetensorsEntry part = e;
    part.begin = e.begin + static_cast<uint64_t>(a * item);
    part.end = part.begin + static_cast<uint64_t>(n * item);
    at::Tensor src = at::from_blob(const_cast<uint8_t*>(bytes(part)), {n}, at::TensorOptions().dtype(e.scalar_type));
    flat.slice(0, a, a + n).copy_(src);
    release(part);
  }
  return out;
}

namespace {
// The page-aligned span of an entry inside the mapping.
std::pair<uint8_t*, size_t> page_span(const uint8_t* base, uint64_t begin, uint64_t end) {
  static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t b = begin / page * page, e = (end + page - 1) / page * page;
  return {const_cast<uint8_t*>(base) + b, static_cast<size_t>(e - b)};
}
}  // namespace

void SafetensorsFile::prefetch(const SafetensorsEntry& e) const {
  if (e.end == e.begin) return;
  auto [p, n] = page_span(static_cast<const uint8_t*>(map_->addr), data_start_ + e.begin,
                          std::min<uint64_t>(data_start_ + e.end, size_));
  madvise(p, n, MADV_WILLNEED);  // a hint: failure is harmless
}

void SafetensorsFile::release(const SafetensorsEntry& e) const {
  if (e.end == e.begin) return;
  auto [p, n] = page_span(static_cast<const uint8_t*>(map_->addr), data_start_ + e.begin,
                          std::min<uint64_t>(data_start_ + e.end, size_));
  // Read-only private file mapping: dropping the pages loses nothing (they come back from the file).
  madvise(p, n, MADV_DONTNEED);
}

// ------------------------------------------------------------------------------------------------------
SafetensorsWriter::SafetensorsWriter(const std::string& path, const std::vector<SafetensorsPlanned>& plan,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), plan_(plan) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  for (const auto& p : plan_) {
    int64_t numel = 1;
    for (int64_t d : p.shape) numel *= d;
    const uint64_t n = static_cast<uint64_t>(numel) * at::elementSize(p.dtype);
    if (header.contains(p.name))
      throw std::runtime_error("'" + path + "': tensor '" + p.name + "' planned twice");
    header[p.name] = {{"dtype", safetensors_dtype_name(p.dtype)},
                      {"shape", p.shape},
                      {"data_offsets", {data_bytes_, data_bytes_ + n}}};
    data_bytes_ += n;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8) h += ' ';  // align the data area to 8 bytes, as the reference writer does
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error("'" + path + "': cannot create (" + errno_text() + ")");
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(h.size()) >> (8 * i));
  write_all(len, 8);
  write_all(h.data(), h.size());
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsWriter::write_all(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, c, std::min<size_t>(n, size_t{1} << 30), static_cast<off_t>(pos_));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw std::runtime_error("'" + path_ + "': write failed (" + errno_text() + ")");
    c += w;
    n -= static_cast<size_t>(w);
    pos_ += static_cast<uint64_t>(w);
  }
}

const SafetensorsPlanned& SafetensorsWriter::next_planned(at::ScalarType dtype, at::IntArrayRef shape) const {
  if (next_ >= plan_.size()) throw std::runtime_error("'" + path_ + "': more tensors written than planned");
  const SafetensorsPlanned& p = plan_[next_];
  if (dtype != p.dtype || shape.vec() != p.shape) {
    throw std::runtime_error("'" + path_ + "': tensor '" + p.name + "' planned as " + c10::toString(p.dtype) +
                             " " + c10::str(at::IntArrayRef(p.shape)) + ", written as " +
                             c10::toString(dtype) + " " + c10::str(shape));
  }
  return p;
}

uint64_t SafetensorsWriter::begin_raw(at::ScalarType dtype, at::IntArrayRef shape, uint64_t* nbytes) {
  next_planned(dtype, shape);
  uint64_t n = at::elementSize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  *nbytes = n;
  return pos_;
}

void SafetensorsWriter::end_raw() {
  const SafetensorsPlanned& p = plan_.at(next_);
  uint64_t n = at::elementSize(p.dtype);
  for (int64_t d : p.shape) n *= static_cast<uint64_t>(d);
  pos_ += n;
  ++next_;
}

void SafetensorsWriter::write(const at::Tensor& t_in) {
  next_planned(t_in.scalar_type(), t_in.sizes());
  at::Tensor t = t_in.detach().to(at::kCPU).contiguous();
  if (t.scalar_type() == at::kBool) t = t.to(at::kByte);
  if (t.nbytes() > 0) write_all(t.data_ptr(), t.nbytes());
  ++next_;
}

void SafetensorsWriter::finish(bool durable) {
  if (next_ != plan_.size()) {
    throw std::runtime_error("'" + path_ + "': " + std::to_string(plan_.size() - next_) +
                             " planned tensors not written");
  }
  if (durable && ::fsync(fd_) != 0)
    throw std::runtime_error("'" + path_ + "': fsync failed (" + errno_text() + ")");
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw std::runtime_error("'" + path_ + "': close failed (" + errno_text() + ")");
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsPlanned> plan;
  for (const auto& [name, t] : tensors) plan.push_back({name, t.scalar_type(), t.sizes().vec()});
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  try {
    SafetensorsWriter w(tmp, plan, metadata);
    for (const auto& [name, t] : tensors) w.write(t);
    w.finish(false);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      throw std::runtime_error("'" + path + "': cannot rename the temporary file into place (" +
                               errno_text() + ")");
    }
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

}  // namespace qvl
