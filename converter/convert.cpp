#include "converter/convert.h"

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "converter/sha256.h"
#include "converter/shapes.h"
#include "instrument/config_json.h"
#include "instrument/h5io.h"

namespace qvl {
namespace fs = std::filesystem;

namespace {
std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw std::runtime_error("'" + p.string() + "': cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
bool starts_with(const std::string& s, const std::string& p) {
  return s.rfind(p, 0) == 0;
}
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}
const char* kEmbed = "model.language_model.embed_tokens.weight";
std::string quoted(const std::string& s) {
  return "'" + s + "'";
}
std::string base_name(const std::string& p) {
  return fs::path(p).filename().string();
}

// Removes a file or a directory tree (not std::filesystem::remove_all: see README, Build notes).
void remove_tree(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    ::unlink(path.c_str());
    return;
  }
  nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0)
    throw std::runtime_error(quoted(path) + ": cannot open to fsync (" + std::strerror(errno) + ")");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw std::runtime_error(quoted(path) + ": fsync failed (" + std::strerror(errno) + ")");
}

at::ScalarType torch_dtype_of(const std::string& name, const std::string& where) {
  if (const auto t = dtype_from_name(name)) return *t;
  throw std::runtime_error(where + ": dtype '" + name + "' cannot be written to safetensors");
}
}  // namespace

// ------------------------------------------------------------------------------------------------------
Checkpoint find_checkpoint(const std::string& dir) {
  Checkpoint ck;
  ck.dir = dir;
  if (!fs::is_directory(dir)) throw std::runtime_error(quoted(dir) + ": not a checkpoint directory");
  const fs::path cfg = fs::path(dir) / "config.json";
  if (!fs::exists(cfg)) throw std::runtime_error(quoted(dir) + ": no config.json");
  ck.config_json = read_text(cfg);
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    ck.indexed = true;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text(index));
    } catch (const nlohmann::json::parse_error& e) {
      throw std::runtime_error(quoted(index.string()) + ": malformed JSON (" + e.what() + ")");
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      throw std::runtime_error(quoted(index.string()) + ": no weight_map object");
    }
    std::set<std::string> files;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) {
        throw std::runtime_error(quoted(index.string()) + ": weight_map['" + it.key() +
                                 "'] is not a file name");
      }
      ck.weight_map[it.key()] = it->get<std::string>();
      files.insert(it->get<std::string>());
    }
    for (const auto& f : files) {
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
        throw std::runtime_error(quoted(index.string()) + ": shard name '" + f +
                                 "' is not a plain file name");
      }
      const fs::path p = fs::path(dir) / f;
      if (!fs::exists(p)) {
        throw std::runtime_error(quoted(index.string()) + " names shard '" + f + "', which does not exist");
      }
      ck.shards.push_back(p.string());
    }
  } else {
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") ck.shards.push_back(e.path().string());
    std::sort(ck.shards.begin(), ck.shards.end());
    // Hub-style shard names carry their count: model-00002-of-00004.safetensors. Without an index, a gap
    // in the numbering is a missing shard.
    static const std::regex numbered(R"((.*)-(\d+)-of-(\d+)\.safetensors)");
    std::map<std::pair<std::string, std::string>, std::set<long>> groups;  // (prefix, total text) -> numbers
    std::map<std::pair<std::string, std::string>, std::string> width;
    for (const auto& s : ck.shards) {
      std::smatch m;
      const std::string name = base_name(s);
      if (std::regex_match(name, m, numbered)) {
        groups[{m[1], m[3]}].insert(std::stol(m[2]));
        width[{m[1], m[3]}] = m[2];
      }
    }
    for (const auto& [key, have] : groups) {
      const long total = std::stol(key.second);
      for (long i = 1; i <= total; ++i) {
        if (have.count(i)) continue;
        std::string num = std::to_string(i);
        num.insert(0, width[key].size() > num.size() ? width[key].size() - num.size() : 0, '0');
        throw std::runtime_error(quoted(dir) + ": shard '" + key.first + "-" + num + "-of-" + key.second +
                                 ".safetensors' is missing (" + std::to_string(have.size()) + " of " +
                                 key.second + " present, and no model.safetensors.index.json)");
      }
    }
  }
  if (ck.shards.empty()) throw std::runtime_error(quoted(dir) + ": no .safetensors files");
  return ck;
}

std::string canonical_key(const std::string& key, const std::string& shard, std::string* layout) {
  std::string l, out;
  if (key == "lm_head.weight") {
    out = key;
  } else if (starts_with(key, "model.visual.") || starts_with(key, "model.language_model.")) {
    l = "runtime";
    out = key;
  } else if (starts_with(key, "visual.")) {
    l = "hub";
    out = "model." + key;
  } else if (starts_with(key, "model.")) {
    l = "hub";
    out = "model.language_model." + key.substr(6);
  } else {
    throw std::runtime_error(
        "unmapped checkpoint key '" + key + "' in shard '" + shard +
        "' (expected visual.*, model.*, model.visual.*, model.language_model.* or lm_head.weight)");
  }
  if (layout) *layout = l;
  return out;
}

std::string checkpoint_key(const std::string& canonical, const std::string& layout) {
  if (layout != "hub" && layout != "runtime") {
    throw std::runtime_error("unknown key layout '" + layout + "' (expected hub or runtime)");
  }
  if (canonical == "lm_head.weight" || layout == "runtime") return canonical;
  if (starts_with(canonical, "model.visual.")) return canonical.substr(6);  // visual.X
  if (starts_with(canonical, "model.language_model.")) return "model." + canonical.substr(21);
  throw std::runtime_error("'" + canonical + "' is not a canonical Qwen2.5-VL weight path");
}

std::string dropped_key_reason(const std::string& key) {
  if (ends_with(key, "rotary_emb.inv_freq") || ends_with(key, "rotary_pos_emb.inv_freq") ||
      ends_with(key, "rotary_emb.original_inv_freq")) {
    return "a non-persistent rotary buffer, recomputed from config.json";
  }
  return "";
}

std::string resolve_tied_lm_head(Weights& w, const ModelConfig& cfg) {
  if (w.has("lm_head.weight")) return "";
  if (!cfg.text.tie_word_embeddings) {
    throw std::runtime_error("missing key 'lm_head.weight' and tie_word_embeddings is false in " +
                             cfg.source);
  }
  w.set("lm_head.weight", w.tensor(kEmbed));
  return "lm_head.weight absent: tied to model.language_model.embed_tokens.weight (tie_word_embeddings)";
}

// ------------------------------------------------------------------------------------------------------
OpenCheckpoint open_checkpoint(const std::string& dir) {
  OpenCheckpoint oc;
  oc.ck = find_checkpoint(dir);
  oc.cfg = parse_model_config(oc.ck.config_json, (fs::path(dir) / "config.json").string());
  for (const auto& s : oc.ck.shards) oc.files.push_back(SafetensorsFile::open(s));

  std::string layout;
  std::map<std::string, std::string> seen;  // canonical -> where it came from
  std::map<std::string, std::vector<int64_t>> shapes;
  std::vector<std::string> dropped;
  for (size_t s = 0; s < oc.files.size(); ++s) {
    const std::string shard = base_name(oc.ck.shards[s]);
    const auto& entries = oc.files[s].entries();
    for (size_t i = 0; i < entries.size(); ++i) {
      const SafetensorsEntry& e = entries[i];
      if (oc.ck.indexed) {
        auto it = oc.ck.weight_map.find(e.name);
        if (it == oc.ck.weight_map.end()) {
          throw std::runtime_error("shard '" + shard + "' holds tensor '" + e.name +
                                   "', which model.safetensors.index.json does not list");
        }
        if (it->second != shard) {
          throw std::runtime_error("model.safetensors.index.json puts tensor '" + e.name + "' in shard '" +
                                   it->second + "', but it is in shard '" + shard + "'");
        }
      }
      const std::string reason = dropped_key_reason(e.name);
      if (!reason.empty()) {
        dropped.push_back(e.name + " (" + shard + ")");
        continue;
      }
      std::string l;
      const std::string key = canonical_key(e.name, shard, &l);
      if (!l.empty()) {
        if (layout.empty()) layout = l;
        if (layout != l) {
          throw std::runtime_error("shard '" + shard + "': key '" + e.name + "' is in the " + l +
                                   " layout but earlier keys are in the " + layout + " layout");
        }
      }
      auto [it, fresh] = seen.emplace(key, e.name + "' in shard '" + shard);
      if (!fresh) {
        throw std::runtime_error("shard '" + shard + "': key '" + e.name + "' maps to '" + key +
                                 "', which already came from '" + it->second + "'");
      }
      shapes[key] = e.shape;
      oc.tensors.push_back({key, s, i});
      oc.tensor_bytes += e.end - e.begin;
    }
  }
  if (oc.ck.indexed) {
    for (const auto& [name, shard] : oc.ck.weight_map) {
      const size_t s = std::find_if(oc.ck.shards.begin(), oc.ck.shards.end(),
                                    [&](const std::string& p) { return base_name(p) == shard; }) -
                       oc.ck.shards.begin();
      if (!oc.files.at(s).has(name)) {
        throw std::runtime_error("model.safetensors.index.json puts tensor '" + name + "' in shard '" +
                                 shard + "', which does not hold it");
      }
    }
  }
  oc.key_layout = layout.empty() ? "unknown" : layout;
  if (!dropped.empty()) {
    std::string list;
    for (const auto& d : dropped) list += (list.empty() ? "" : ", ") + d;
    oc.notes.push_back("dropped " + std::to_string(dropped.size()) + " key(s), " +
                       dropped_key_reason(dropped.front().substr(0, dropped.front().find(' '))) + ": " +
                       list);
  }
  check_tensor_shapes(shapes, oc.cfg, quoted(dir));
  if (!shapes.count("lm_head.weight")) {
    oc.notes.push_back("lm_head.weight absent: tied to " + std::string(kEmbed) +
                       " when loaded (tie_word_embeddings)");
  }
  return oc;
}

Weights load_checkpoint(const std::string& dir, ModelConfig* cfg_out, std::string* config_json) {
  OpenCheckpoint oc = open_checkpoint(dir);
  Weights w;
  for (const auto& t : oc.tensors) w.set(t.key, oc.files[t.shard].read(oc.entry(t).name));
  resolve_tied_lm_head(w, oc.cfg);
  if (cfg_out) *cfg_out = oc.cfg;
  if (config_json) *config_json = oc.ck.config_json;
  return w;
}

// ------------------------------------------------------------------------------------------------------
at::ScalarType parse_cast_dtype(const std::string& n) {
  if (n == "bf16" || n == "bfloat16") return at::kBFloat16;
  if (n == "f16" || n == "fp16" || n == "float16") return at::kHalf;
  if (n == "f32" || n == "fp32" || n == "float32") return at::kFloat;
  throw std::runtime_error("--dtype '" + n + "': expected bf16, f16 or f32");
}

at::ScalarType output_dtype(at::ScalarType stored, std::optional<at::ScalarType> dtype) {
  return dtype && at::isFloatingType(stored) ? *dtype : stored;
}

at::Tensor cast_for_output(const at::Tensor& t, std::optional<at::ScalarType> dtype) {
  const at::ScalarType out = output_dtype(t.scalar_type(), dtype);
  return out == t.scalar_type() ? t : t.to(out);
}

namespace {
// A file descriptor, closed on scope exit.
struct Fd {
  int fd = -1;
  Fd(const std::string& path, int flags) : fd(::open(path.c_str(), flags | O_CLOEXEC)) {
    if (fd < 0) throw std::runtime_error(quoted(path) + ": cannot open (" + std::strerror(errno) + ")");
  }
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

// A read-only private mapping of a whole file.
struct Mapped {
  const uint8_t* base = nullptr;
  uint64_t size = 0;
  explicit Mapped(const std::string& path) {
    Fd f(path, O_RDONLY);
    struct stat st {};
    if (fstat(f.fd, &st) != 0) throw std::runtime_error(quoted(path) + ": cannot stat");
    size = static_cast<uint64_t>(st.st_size);
    if (size == 0) return;
    void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, f.fd, 0);
    if (p == MAP_FAILED)
      throw std::runtime_error(quoted(path) + ": mmap failed (" + std::strerror(errno) + ")");
    base = static_cast<const uint8_t*>(p);
  }
  ~Mapped() {
    if (base) munmap(const_cast<uint8_t*>(base), size);
  }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
};

// Hashes chunks on a worker thread, in the order given, while the caller writes them.
class Hasher {
 public:
  explicit Hasher(Sha256* sha) : sha_(sha), worker_([this] { loop(); }) {}
  ~Hasher() {
    {
      std::lock_guard<std::mutex> l(m_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }
  void submit(const uint8_t* p, size_t n) {
    {
      std::lock_guard<std::mutex> l(m_);
      q_.push_back({p, n});
      ++submitted_;
    }
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> l(m_);
    cv_.wait(l, [&] { return done_ == submitted_; });
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> l(m_);
    for (;;) {
      cv_.wait(l, [&] { return stop_ || !q_.empty(); });
      if (q_.empty()) return;  // stop_ and nothing left
      auto [p, n] = q_.front();
      q_.pop_front();
      l.unlock();
      sha_->update(p, n);
      l.lock();
      ++done_;
      cv_.notify_all();
    }
  }
  Sha256* sha_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::pair<const uint8_t*, size_t>> q_;
  uint64_t submitted_ = 0, done_ = 0;
  bool stop_ = false;
  std::thread worker_;
};

// Writes n bytes at `pos` of `fd`, or throws naming `path`.
void pwrite_all(int fd, const std::string& path, const uint8_t* src, uint64_t n, uint64_t pos) {
  for (uint64_t put = 0; put < n;) {
    const ssize_t w = ::pwrite(fd, src + put, static_cast<size_t>(std::min<uint64_t>(n - put, 1u << 30)),
                               static_cast<off_t>(pos + put));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw std::runtime_error(quoted(path) + ": write failed (" + std::strerror(errno) + ")");
    put += static_cast<uint64_t>(w);
  }
}

// A piece of `n` bytes of `from`-dtype elements, cast to `to` into `dst` (whole elements: pieces start at a
// tensor's start and hold whole elements). Returns the bytes written to dst.
using Cast = std::optional<std::pair<at::ScalarType, at::ScalarType>>;
uint64_t cast_into(uint8_t* dst, const uint8_t* src, uint64_t n, const std::pair<at::ScalarType, at::ScalarType>& cast) {
  const int64_t elems = static_cast<int64_t>(n / at::elementSize(cast.first));
  at::Tensor out = at::from_blob(dst, {elems}, at::TensorOptions().dtype(cast.second));
  out.copy_(at::from_blob(const_cast<uint8_t*>(src), {elems}, at::TensorOptions().dtype(cast.first)));
  return static_cast<uint64_t>(elems) * at::elementSize(cast.second);
}

// Streams bytes [from, to) of a mapped file piece by piece: each piece (`piece(at)` bytes, or 16 MiB) is
// hashed (on the Hasher's thread) and handed to `sink`, the next piece read ahead meanwhile, and its pages
// dropped from this process's resident set once done. So a 1 GB tensor costs no more resident memory than
// a piece, and the data is read once.
constexpr uint64_t kChunk = 16u << 20;
using PieceFn = std::function<uint64_t(uint64_t at)>;
using SinkFn = std::function<void(const uint8_t* src, uint64_t n)>;
void stream_bytes(const uint8_t* base, uint64_t from, uint64_t to, Hasher* hasher, const PieceFn& piece = {},
                  const SinkFn& sink = {}) {
  static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  for (uint64_t at = from; at < to;) {
    const uint64_t n = std::min(piece ? piece(at) : kChunk, to - at);
    if (n == 0) throw std::logic_error("stream_bytes: the sink takes no more bytes before the end");
    if (at + n < to) {
      const uint64_t nb = (at + n) / page * page;
      madvise(const_cast<uint8_t*>(base) + nb, static_cast<size_t>(std::min(std::max(n, kChunk), to - nb)),
              MADV_WILLNEED);
    }
    if (hasher) hasher->submit(base + at, static_cast<size_t>(n));
    if (sink) {
      try {
        sink(base + at, n);
      } catch (...) {
        if (hasher) hasher->wait();  // its thread reads the mapping
        throw;
      }
    }
    if (hasher) hasher->wait();
    const uint64_t pb = at / page * page,
                   pe = std::min((at + n + page - 1) / page * page, (to + page - 1) / page * page);
    madvise(const_cast<uint8_t*>(base) + pb, static_cast<size_t>(pe - pb), MADV_DONTNEED);
    at += n;
  }
}
}  // namespace

ConvertReport convert_checkpoint(const std::string& dir, const std::string& out, const ConvertOptions& opt) {
  ConvertReport rep;
  rep.removed_temporaries = remove_stale_temporaries(out);
  OpenCheckpoint oc = open_checkpoint(dir);  // every check before the output exists
  rep.key_layout = oc.key_layout;
  rep.notes = oc.notes;
  if (fs::is_directory(out)) throw std::runtime_error(quoted(out) + ": is a directory");

  nlohmann::json source;
  source["checkpoint"] = fs::path(dir).filename().string().empty()
                             ? fs::path(dir).parent_path().filename().string()
                             : fs::path(dir).filename().string();
  if (opt.dtype) source["cast"] = dtype_name(*opt.dtype);
  h5::WeightsWriter w(out, {{"config", oc.ck.config_json}, {"key_layout", oc.key_layout}}, opt.gzip_level);

  std::vector<std::vector<long>> kept(oc.files.size());  // shard -> entry -> index into oc.tensors, or -1
  for (size_t s = 0; s < oc.files.size(); ++s) kept[s].assign(oc.files[s].entries().size(), -1);
  for (size_t i = 0; i < oc.tensors.size(); ++i)
    kept[oc.tensors[i].shard][oc.tensors[i].entry] = static_cast<long>(i);

  for (size_t s = 0; s < oc.files.size(); ++s) {
    const SafetensorsFile& f = oc.files[s];
    const uint8_t* base = f.file_bytes();
    Sha256 sha;  // of the whole shard, fed in file order as the walk reads it: one read of the data
    Hasher hasher(&sha);
    uint64_t hashed = 0;
    for (size_t i = 0; i < f.entries().size(); ++i) {
      const SafetensorsEntry& e = f.entries()[i];
      const uint64_t b = f.data_start() + e.begin, end = f.data_start() + e.end;
      stream_bytes(base, hashed, b, &hasher);  // the header (tensors are contiguous)
      hashed = std::max(hashed, b);
      if (kept[s][i] < 0) {  // dropped on purpose: hashed, not written
        stream_bytes(base, hashed, end, &hasher);
      } else if (opt.gzip_level == 0 && e.scalar_type != at::kBool) {
        // The safetensors bytes are the stored bytes (little-endian): copy them, or cast them, one HDF5 chunk
        // at a time into the stream's buffer, which writes it with its checksum; hashing on the way.
        const at::ScalarType outd = output_dtype(e.scalar_type, opt.dtype);
        const uint64_t in_size = at::elementSize(e.scalar_type);
        h5::DatasetStream ds = w.stream(oc.tensors[kept[s][i]].key, outd, e.shape);
        stream_bytes(
            base, hashed, end, &hasher, [&](uint64_t) { return ds.next_elems() * in_size; },
            [&](const uint8_t* src, uint64_t n) {
              if (outd == e.scalar_type)
                std::memcpy(ds.buffer(), src, static_cast<size_t>(n));
              else
                cast_into(ds.buffer(), src, n, {e.scalar_type, outd});
              ds.put();
            });
        if (ds.next_elems() != 0)
          throw std::logic_error(quoted(w.tmp_path()) + ": tensor '" + e.name + "' was not written whole");
      } else {
        // gzip, or bool (normalised to 0/1): through a tensor over the mapped bytes, dropped once written.
        stream_bytes(base, hashed, end, &hasher);
        f.prefetch(e);
        w.add(oc.tensors[kept[s][i]].key, cast_for_output(f.view(e), opt.dtype));
        f.release(e);
      }
      hashed = std::max(hashed, end);
      if (kept[s][i] >= 0) {
        rep.tensors += 1;
        rep.bytes += e.end - e.begin;
      }
      if (opt.progress) opt.progress(rep.bytes, oc.tensor_bytes);
    }
    stream_bytes(base, hashed, f.file_size(), &hasher);  // none: the header check refuses trailing bytes
    hasher.wait();
    source["shards"].push_back({{"file", base_name(oc.ck.shards[s])}, {"sha256", sha.hex()}});
  }
  w.set_root_attr("source", source.dump());
  w.commit(opt.durable);
  return rep;
}

// ------------------------------------------------------------------------------------------------------
std::vector<StoredTensor> list_h5_tensors(const std::string& path) {
  h5::File f = h5::open_read(path);
  std::vector<StoredTensor> out;
  std::function<void(hid_t, const std::string&)> walk = [&](hid_t g, const std::string& prefix) {
    for (const auto& name : h5::children(g)) {
      const std::string dotted = join_path(prefix, name);
      if (h5::is_group(g, name)) {
        h5::Handle sub = h5::open_group(g, name, quoted(path));
        walk(sub.id(), dotted);
        continue;
      }
      hid_t id = H5Dopen2(g, name.c_str(), H5P_DEFAULT);
      if (id < 0) throw std::runtime_error(quoted(path) + ":/" + dotted + ": cannot open the dataset");
      h5::Handle ds(id, H5Dclose);
      h5::Handle type(H5Dget_type(ds.id()), H5Tclose);
      h5::Handle space(H5Dget_space(ds.id()), H5Sclose);
      StoredTensor t;
      t.path = dotted;
      const std::string kind =
          h5::has_attr(ds.id(), "kind") ? h5::attr_str(ds.id(), "kind", quoted(path)) : "tensor";
      if (kind != "tensor") {
        t.dtype = "python " + kind;  // a recorded Python scalar (docs/design.md §3)
      } else if (h5::has_attr(ds.id(), "dtype")) {
        t.dtype = h5::attr_str(ds.id(), "dtype", quoted(path) + ":/" + dotted);
      } else {
        const H5T_class_t cls = H5Tget_class(type.id());
        t.dtype = std::string(cls == H5T_FLOAT     ? "hdf5-float"
                              : cls == H5T_INTEGER ? "hdf5-int"
                                                   : "hdf5-other") +
                  std::to_string(8 * H5Tget_size(type.id()));
      }
      const int nd = H5Sget_simple_extent_ndims(space.id());
      std::vector<hsize_t> dims(static_cast<size_t>(std::max(nd, 0)));
      if (nd > 0) H5Sget_simple_extent_dims(space.id(), dims.data(), nullptr);
      uint64_t numel = 1;
      for (hsize_t d : dims) {
        t.shape.push_back(static_cast<int64_t>(d));
        numel *= d;
      }
      t.nbytes = numel * H5Tget_size(type.id());
      out.push_back(std::move(t));
    }
  };
  walk(f.id(), "");
  return out;
}

namespace {
// Where a dataset's bytes lie in the file, when they can be copied as they are: contiguous, unfiltered,
// allocated, little-endian (or single-byte) and exactly `nbytes` long.
bool raw_span(hid_t file, const std::string& path, uint64_t nbytes, uint64_t* offset) {
  hid_t id = H5Dopen2(file, path.c_str(), H5P_DEFAULT);
  if (id < 0) return false;
  h5::Handle ds(id, H5Dclose);
  h5::Handle dcpl(H5Dget_create_plist(ds.id()), H5Pclose);
  h5::Handle type(H5Dget_type(ds.id()), H5Tclose);
  if (H5Pget_layout(dcpl.id()) != H5D_CONTIGUOUS || H5Pget_nfilters(dcpl.id()) != 0) return false;
  if (H5Tget_size(type.id()) > 1 && H5Tget_order(type.id()) != H5T_ORDER_LE) return false;
  const haddr_t at = H5Dget_offset(ds.id());
  if (at == HADDR_UNDEF || H5Dget_storage_size(ds.id()) != nbytes) return false;
  *offset = static_cast<uint64_t>(at);
  return true;
}
}  // namespace

ExportReport export_safetensors(const std::string& h5_path, const std::string& out_dir,
                                const ExportOptions& opt) {
  ExportReport rep;
  fs::path out = fs::path(out_dir);
  if (out.filename().empty()) out = out.parent_path();  // "dir/" -> "dir"
  rep.removed_temporaries = remove_stale_temporaries(out.string());
  if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out))) {
    throw std::runtime_error(quoted(out.string()) + ": exists and is not an empty directory");
  }

  // Everything about the file first: format, config, the tensors and their output names.
  std::string config, layout = opt.layout;
  {
    h5::File f = h5::open_read(h5_path);
    const std::string where = quoted(h5_path);
    const std::string format = h5::has_attr(f.id(), "format") ? h5::attr_str(f.id(), "format", where) : "";
    if (format != "qvl.weights") {
      throw std::runtime_error(where + ": not a qvl.weights file (format '" + format + "')");
    }
    config = h5::attr_str(f.id(), "config", where);
    if (layout.empty()) {
      layout = h5::has_attr(f.id(), "key_layout") ? h5::attr_str(f.id(), "key_layout", where) : "hub";
      if (layout != "hub" && layout != "runtime") layout = "hub";
    }
  }
  rep.layout = layout;
  // A broken config or a tensor of the wrong shape fails here, not later in transformers.
  const ModelConfig cfg = parse_model_config(config, h5_path + ":config");
  std::map<std::string, std::vector<int64_t>> shapes;
  struct Item {
    std::string h5_path;  // "model/visual/..."
    SafetensorsPlanned plan;
    uint64_t nbytes;        // as written
    at::ScalarType stored;  // as stored in the file
    uint64_t stored_bytes;
  };
  std::vector<Item> items;
  for (const auto& t : list_h5_tensors(h5_path)) {
    const at::ScalarType in = torch_dtype_of(t.dtype, quoted(h5_path) + ":/" + t.path);
    const at::ScalarType outd = output_dtype(in, opt.dtype);
    std::string slash = t.path;
    std::replace(slash.begin(), slash.end(), '.', '/');
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    shapes[t.path] = t.shape;
    items.push_back({slash,
                     {checkpoint_key(t.path, layout), outd, t.shape},
                     numel * at::elementSize(outd),
                     in,
                     numel * at::elementSize(in)});
  }
  if (items.empty()) throw std::runtime_error(quoted(h5_path) + ": holds no tensors");
  check_tensor_shapes(shapes, cfg, quoted(h5_path));
  std::sort(items.begin(), items.end(),
            [](const Item& a, const Item& b) { return a.plan.name < b.plan.name; });

  // Shards: greedy in name order, a new shard when the next tensor would pass max_shard_bytes.
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!shards.back().empty() && in_shard + items[i].nbytes > opt.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += items[i].nbytes;
    total += items[i].nbytes;
  }
  auto shard_name = [&](size_t s) {
    if (shards.size() == 1) return std::string("model.safetensors");
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    return std::string(buf);
  };

  const std::string tmp =
      (out.parent_path() / ("." + out.filename().string() + ".tmp-" + std::to_string(::getpid()))).string();
  if (::mkdir(tmp.c_str(), 0755) != 0) {
    throw std::runtime_error(quoted(tmp) + ": cannot create the temporary directory (" +
                             std::strerror(errno) + ")");
  }
  try {
    {
      std::ofstream cj(tmp + "/config.json");
      cj << nlohmann::json::parse(config).dump(2) << "\n";
      if (!cj) throw std::runtime_error(quoted(tmp + "/config.json") + ": write failed");
    }
    h5::File f = h5::open_read(h5_path);
    h5::note_if_unchecksummed(f.id(), h5_path);
    Mapped h5_in(h5_path);
    std::vector<uint8_t> chunk;  // one stored chunk (ChunkReader)
    std::vector<uint8_t> cast;   // --dtype: one piece cast at a time
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
      const std::string name = shard_name(s);
      std::vector<SafetensorsPlanned> plan;
      for (size_t i : shards[s]) plan.push_back(items[i].plan);
      SafetensorsWriter sw(tmp + "/" + name, plan, {{"format", "pt"}});
      for (size_t i : shards[s]) {
        const Item& it = items[i];
        const std::string where = quoted(h5_path) + ":/" + it.h5_path;
        const std::string shard_path = tmp + "/" + name;
        const Cast conv = it.stored == it.plan.dtype ? Cast{} : Cast{{it.stored, it.plan.dtype}};
        uint64_t pos = 0, n = 0;
        // Writes a piece of stored bytes into the shard at `pos` (cast on the way), advancing pos.
        auto put = [&](const uint8_t* src, uint64_t bytes) {
          if (conv) {
            const uint64_t out_bytes = bytes / at::elementSize(conv->first) * at::elementSize(conv->second);
            if (cast.size() < out_bytes) cast.resize(out_bytes);
            cast_into(cast.data(), src, bytes, *conv);
            src = cast.data();
            bytes = out_bytes;
          }
          pwrite_all(sw.fd(), shard_path, src, bytes, pos);
          pos += bytes;
        };
        uint64_t from = 0;
        std::optional<h5::ChunkReader> chunks;
        if (it.stored != at::kBool && it.nbytes > 0 && !raw_span(f.id(), it.h5_path, it.stored_bytes, &from))
          chunks.emplace(f.id(), it.h5_path, where, &chunk);
        if (it.stored != at::kBool && it.nbytes > 0 && chunks && chunks->usable()) {
          // Chunked with Fletcher-32 (what qvl writes): chunk by chunk, each checksum verified, no tensor in
          // memory.
          pos = sw.begin_raw(it.plan.dtype, it.plan.shape, &n);
          const uint64_t item = at::elementSize(it.stored);
          for (uint64_t e = chunks->next_elems(); e > 0; e = chunks->next_elems()) put(chunks->next(), e * item);
          sw.end_raw();
        } else if (it.stored != at::kBool && it.nbytes > 0 && !chunks) {
          // Contiguous and unfiltered (files written before checksums): the stored bytes, 16 MiB at a time.
          pos = sw.begin_raw(it.plan.dtype, it.plan.shape, &n);
          if (from + it.stored_bytes > h5_in.size) throw std::runtime_error(where + ": data beyond the end of the file");
          stream_bytes(h5_in.base, from, from + it.stored_bytes, nullptr, {}, put);
          sw.end_raw();
        } else {
          at::Tensor t = h5::read_tensor(f.id(), it.h5_path, quoted(h5_path) + ":/" + it.h5_path);
          sw.write(cast_for_output(t, opt.dtype));
        }
        weight_map[items[i].plan.name] = name;
        rep.tensors += 1;
        rep.bytes += items[i].nbytes;
        if (opt.progress) opt.progress(rep.bytes, total);
      }
      sw.finish(opt.durable);
      rep.shards.push_back(name);
    }
    if (shards.size() > 1) {
      nlohmann::ordered_json index;
      index["metadata"] = {{"total_size", total}};
      index["weight_map"] = weight_map;
      std::ofstream ij(tmp + "/model.safetensors.index.json");
      ij << index.dump(2) << "\n";
      if (!ij) throw std::runtime_error(quoted(tmp + "/model.safetensors.index.json") + ": write failed");
    }
    if (opt.durable) {
      fsync_path(tmp + "/config.json", false);
      if (shards.size() > 1) fsync_path(tmp + "/model.safetensors.index.json", false);
      fsync_path(tmp, true);
    }
    if (fs::exists(out)) ::rmdir(out.c_str());  // an empty directory given as the target
    if (std::rename(tmp.c_str(), out.c_str()) != 0) {
      throw std::runtime_error("cannot rename '" + tmp + "' to '" + out.string() +
                               "': " + std::strerror(errno));
    }
    if (opt.durable) fsync_path(out.parent_path().empty() ? "." : out.parent_path().string(), true);
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  return rep;
}

// ------------------------------------------------------------------------------------------------------
bool is_temporary_of(const std::string& candidate, const std::string& final_path, long* pid) {
  fs::path fin(final_path);
  if (fin.filename().empty()) fin = fin.parent_path();
  const fs::path cand(candidate);
  if (cand.parent_path() != fin.parent_path()) return false;
  const std::string prefix = "." + fin.filename().string() + ".tmp-";
  const std::string name = cand.filename().string();
  if (!starts_with(name, prefix) || name.size() == prefix.size() || name.size() - prefix.size() > 9)
    return false;
  const std::string digits = name.substr(prefix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  if (pid) *pid = std::stol(digits);
  return true;
}

std::vector<std::string> remove_stale_temporaries(const std::string& final_path) {
  fs::path fin(final_path);
  if (fin.filename().empty()) fin = fin.parent_path();
  const fs::path dir = fin.parent_path().empty() ? fs::path(".") : fin.parent_path();
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return removed;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    long pid = 0;
    const std::string p = (fin.parent_path() / e.path().filename()).string();
    if (!is_temporary_of(p, fin.string(), &pid)) continue;
    // Only when its writer is gone: a live process (this one, or another conversion) keeps its file.
    if (pid == ::getpid() || !(::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)) continue;
    remove_tree(e.path().string());
    removed.push_back(e.path().string());
  }
  return removed;
}

Weights load_weights_any(const std::string& path, ModelConfig* cfg, std::string* config_json) {
  if (fs::is_directory(path)) return load_checkpoint(path, cfg, config_json);
  h5::WeightsFile wf = h5::read_weights(path);
  ModelConfig c = parse_model_config(wf.config_json, path + ":config");
  // A vision-only file (qvl import --weights-out: the conversion framework's vision_weights.pt) has no text side.
  if (wf.attrs.count("scope") == 0 || wf.attrs.at("scope") != "vision") resolve_tied_lm_head(wf.weights, c);
  if (cfg) *cfg = c;
  if (config_json) *config_json = wf.config_json;
  return wf.weights;
}

// ------------------------------------------------------------------------------------------------------
namespace {
bool stream_unit_prefix(const std::string& key, std::string* unit) {
  for (const char* stack : {"model.visual.blocks.", "model.language_model.layers."}) {
    if (!starts_with(key, stack)) continue;
    const size_t a = std::string(stack).size(), dot = key.find('.', a);
    if (dot == std::string::npos || dot == a) return false;
    *unit = key.substr(0, dot);
    return true;
  }
  return false;
}

at::ScalarType load_dtype(at::ScalarType stored, std::optional<at::ScalarType> dtype) {
  return dtype && at::isFloatingType(stored) ? *dtype : stored;
}

// The tensors of an open checkpoint, read from the mapped shards on demand.
class CheckpointSource : public TensorSource {
 public:
  CheckpointSource(OpenCheckpoint oc, std::optional<at::ScalarType> dtype) : oc_(std::move(oc)), dtype_(dtype) {
    for (size_t i = 0; i < oc_.tensors.size(); ++i) by_key_[oc_.tensors[i].key] = i;
    for (const auto& path : oc_.ck.shards) {
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) throw std::runtime_error(quoted(path) + ": cannot stat (" + std::strerror(errno) + ")");
      opened_.push_back(st);
    }
  }
  const OpenCheckpoint& checkpoint() const { return oc_; }

  at::Tensor load(const std::string& key) const override {
    auto it = by_key_.find(key);
    if (it == by_key_.end()) throw std::runtime_error(quoted(oc_.ck.dir) + ": no tensor '" + key + "' in the checkpoint");
    const OpenCheckpoint::Tensor& t = oc_.tensors[it->second];
    const SafetensorsEntry& e = oc_.entry(t);
    const std::string& path = oc_.ck.shards[t.shard];
    const std::string what = "shard '" + base_name(path) + "' (tensor '" + e.name + "'" +
                             (e.name == key ? std::string() : ", '" + key + "'") + ")";
    // The shard must still be the file that was opened and mapped: reading a mapping past a truncated end is
    // a SIGBUS, and a removed or replaced shard means the checkpoint changed under the run.
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
      throw std::runtime_error(what + ": the shard has disappeared since it was opened (" + path + ": " + std::strerror(errno) + ")");
    const struct stat& was = opened_[t.shard];
    const uint64_t need = oc_.files[t.shard].data_start() + e.end;
    if (static_cast<uint64_t>(st.st_size) < need) {
      throw std::runtime_error(what + ": the shard is truncated: it now has " + std::to_string(st.st_size) +
                               " bytes, the tensor needs bytes up to " + std::to_string(need) + " (" +
                               std::to_string(was.st_size) + " when opened; " + path + ")");
    }
    if (st.st_dev != was.st_dev || st.st_ino != was.st_ino || st.st_size != was.st_size) {
      throw std::runtime_error(what + ": the shard was replaced or resized since it was opened (" + path + ")");
    }
    return oc_.files[t.shard].read_as(e, load_dtype(e.scalar_type, dtype_));
  }

 private:
  OpenCheckpoint oc_;
  std::optional<at::ScalarType> dtype_;
  std::map<std::string, size_t> by_key_;
  std::vector<struct stat> opened_;
};

// The datasets of a qvl.weights file, read (one dataset each) on demand.
class H5Source : public TensorSource {
 public:
  H5Source(const std::string& path, std::optional<at::ScalarType> dtype)
      : path_(path), file_(std::make_shared<h5::File>(h5::open_read(path))), dtype_(dtype) {}
  at::Tensor load(const std::string& key) const override {
    std::string slash = key;
    std::replace(slash.begin(), slash.end(), '.', '/');
    at::Tensor t = h5::read_tensor(file_->id(), slash, quoted(path_) + ":/" + slash);
    const at::ScalarType want = load_dtype(t.scalar_type(), dtype_);
    return want == t.scalar_type() ? t : t.to(want);
  }
  hid_t id() const { return file_->id(); }

 private:
  std::string path_;
  std::shared_ptr<h5::File> file_;
  std::optional<at::ScalarType> dtype_;
};
}  // namespace

StreamedWeights open_weights_streamed(const std::string& path, std::optional<at::ScalarType> dtype) {
  StreamedWeights sw;
  std::vector<std::string> units;
  at::ScalarType embed_dtype = at::kFloat;
  auto add = [&](Weights& w, const std::shared_ptr<const TensorSource>& src, const std::string& key,
                 const std::vector<int64_t>& shape, at::ScalarType stored, uint64_t nbytes) {
    const at::ScalarType out = load_dtype(stored, dtype);
    sw.cast = sw.cast || out != stored;
    sw.stored_bytes += nbytes;
    w.set_lazy(key, src, key, shape, out);
    if (key == kEmbed) embed_dtype = out;
    std::string unit;
    if (stream_unit_prefix(key, &unit) && (units.empty() || units.back() != unit)) units.push_back(unit);
  };
  Weights w;
  std::shared_ptr<const TensorSource> src;
  if (fs::is_directory(path)) {
    auto cs = std::make_shared<CheckpointSource>(open_checkpoint(path), dtype);
    src = cs;
    const OpenCheckpoint& oc = cs->checkpoint();
    sw.cfg = oc.cfg;
    sw.config_json = oc.ck.config_json;
    for (const auto& t : oc.tensors) {
      const SafetensorsEntry& e = oc.entry(t);
      add(w, src, t.key, e.shape, e.scalar_type, e.end - e.begin);
    }
  } else {
    auto hs = std::make_shared<H5Source>(path, dtype);
    src = hs;
    const std::string where = quoted(path);
    if (!h5::has_attr(hs->id(), "format") || h5::attr_str(hs->id(), "format", where) != "qvl.weights")
      throw std::runtime_error(where + ": not a qvl weights file (no format = 'qvl.weights' attribute)");
    if (!h5::has_attr(hs->id(), "config"))
      throw std::runtime_error(where + ": missing root attribute 'config' (the HF config.json)");
    sw.config_json = h5::attr_str(hs->id(), "config", where);
    sw.cfg = parse_model_config(sw.config_json, path + ":config");
    for (const auto& t : list_h5_tensors(path)) {
      add(w, src, t.path, t.shape, torch_dtype_of(t.dtype, where + ":/" + t.path), t.nbytes);
    }
  }
  if (!w.has("lm_head.weight")) {
    if (!sw.cfg.text.tie_word_embeddings)
      throw std::runtime_error("missing key 'lm_head.weight' and tie_word_embeddings is false in " + sw.cfg.source);
    w.set_lazy("lm_head.weight", src, kEmbed, w.leaf_shape(kEmbed), embed_dtype);
  }
  for (const auto& u : units) w.mark_unit(u);
  sw.weights = w;
  return sw;
}

ReplayModel load_replay_model(const std::string& path, const Recording& rec, bool stream) {
  if (!stream) {
    ModelConfig wcfg;
    return replay_model(load_weights_any(path, &wcfg), wcfg, rec);
  }
  StreamedWeights sw = open_weights_streamed(path, replay_dtype(rec));
  ReplayModel m;
  m.config = recording_config(rec, sw.cfg);
  m.cast = sw.cast;
  m.weights = sw.weights;
  return m;
}

}  // namespace qvl
