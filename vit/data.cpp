#include "vit/data.h"

#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace qvl::vit {
namespace fs = std::filesystem;
namespace {

std::runtime_error err(const std::string& path, const std::string& what) {
  return std::runtime_error("'" + path + "': " + what);
}

uint32_t be32(const std::string& b, size_t off) {
  return (uint32_t(uint8_t(b[off])) << 24) | (uint32_t(uint8_t(b[off + 1])) << 16) | (uint32_t(uint8_t(b[off + 2])) << 8) |
         uint32_t(uint8_t(b[off + 3]));
}

at::Tensor bytes_tensor(const std::string& data, std::vector<int64_t> shape) {
  at::Tensor t = at::empty(shape, at::kByte);
  if (!data.empty()) std::memcpy(t.data_ptr(), data.data(), data.size());
  return t;
}

void check_labels(const at::Tensor& labels, int64_t classes, const std::string& where) {
  if (labels.numel() == 0) return;
  at::Tensor bad = (labels >= classes).nonzero();
  if (bad.size(0) > 0) {
    const int64_t i = bad[0][0].item<int64_t>();
    throw err(where, "label " + std::to_string(labels[i].item<int64_t>()) + " of record " + std::to_string(i) +
                         " is out of range [0, " + std::to_string(classes) + ")");
  }
}

std::string find_file(const std::string& dir, const std::string& stem) {
  for (const std::string& n : {stem + ".gz", stem}) {
    const fs::path p = fs::path(dir) / n;
    if (fs::exists(p)) return p.string();
  }
  throw err((fs::path(dir) / (stem + ".gz")).string(), "no such file (nor " + stem + " without .gz)");
}

}  // namespace

const char* default_fashion_mnist_dir() { return "/usr/share/datasets/fashion-mnist"; }

std::string read_maybe_gz(const std::string& path) {
  if (!fs::exists(path)) throw err(path, "no such file");
  if (fs::is_directory(path)) throw err(path, "is a folder, expected a file");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw err(path, "cannot open");
  std::string raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (raw.size() < 2 || uint8_t(raw[0]) != 0x1f || uint8_t(raw[1]) != 0x8b) return raw;  // not gzip
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 16) != Z_OK) throw err(path, "zlib inflateInit2 failed");
  std::string out;
  std::vector<char> buf(1 << 20);
  zs.next_in = reinterpret_cast<Bytef*>(raw.data());
  zs.avail_in = static_cast<uInt>(raw.size());
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    zs.next_out = reinterpret_cast<Bytef*>(buf.data());
    zs.avail_out = static_cast<uInt>(buf.size());
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      const std::string msg = zs.msg ? zs.msg : (rc == Z_BUF_ERROR ? "unexpected end of data" : "error " + std::to_string(rc));
      inflateEnd(&zs);
      throw err(path, "corrupt or truncated gzip stream (" + msg + ") after " + std::to_string(out.size()) + " bytes");
    }
    out.append(buf.data(), buf.size() - zs.avail_out);
  }
  inflateEnd(&zs);
  return out;
}

Idx parse_idx(const std::string& bytes, const std::string& where, int64_t expect_ndim) {
  if (bytes.size() < 4) throw err(where, "too short for an IDX header (" + std::to_string(bytes.size()) + " bytes)");
  const uint32_t magic = be32(bytes, 0);
  const uint32_t expect = 0x00000800u | uint32_t(expect_ndim);
  if (magic != expect) {
    char m[16], e[16];
    std::snprintf(m, sizeof m, "0x%08x", magic);
    std::snprintf(e, sizeof e, "0x%08x", expect);
    throw err(where, std::string("wrong IDX magic number ") + m + ", expected " + e + " (unsigned bytes, " +
                         std::to_string(expect_ndim) + " dims)");
  }
  const size_t header = 4 + 4 * size_t(expect_ndim);
  if (bytes.size() < header) throw err(where, "IDX header truncated: " + std::to_string(bytes.size()) + " bytes");
  Idx idx;
  size_t n = 1;
  for (int64_t i = 0; i < expect_ndim; ++i) {
    idx.dims.push_back(be32(bytes, 4 + 4 * i));
    n *= size_t(idx.dims.back());
  }
  if (bytes.size() - header != n) {
    std::string dims;
    for (int64_t d : idx.dims) dims += (dims.empty() ? "" : " x ") + std::to_string(d);
    throw err(where, "size does not match the header: " + dims + " = " + std::to_string(n) + " data bytes expected, " +
                         std::to_string(bytes.size() - header) + " present");
  }
  idx.data = bytes.substr(header);
  return idx;
}

Dataset load_fashion_mnist(const std::string& dir_in, bool train) {
  const std::string dir = dir_in.empty() ? default_fashion_mnist_dir() : dir_in;
  if (!fs::is_directory(dir)) throw err(dir, "no such folder (Fashion-MNIST: install dataset-fashion-mnist or pass --data DIR)");
  const std::string split = train ? "train" : "t10k";
  const std::string ip = find_file(dir, split + "-images-idx3-ubyte"), lp = find_file(dir, split + "-labels-idx1-ubyte");
  Idx im = parse_idx(read_maybe_gz(ip), ip, 3);
  Idx lb = parse_idx(read_maybe_gz(lp), lp, 1);
  if (im.dims[0] != lb.dims[0])
    throw err(lp, std::to_string(lb.dims[0]) + " labels for " + std::to_string(im.dims[0]) + " images in '" + ip + "'");
  Dataset d;
  d.images = bytes_tensor(im.data, {im.dims[0], 1, im.dims[1], im.dims[2]});
  d.labels = bytes_tensor(lb.data, {lb.dims[0]}).to(at::kLong);
  d.classes = 10;
  d.name = "fashion_mnist/" + std::string(train ? "train" : "test");
  check_labels(d.labels, d.classes, lp);
  return d;
}

Dataset load_cifar10(const std::string& dir, bool train) {
  if (dir.empty()) throw std::runtime_error("cifar10: pass --data DIR (the folder of data_batch_*.bin and test_batch.bin)");
  if (!fs::is_directory(dir)) throw err(dir, "no such folder (CIFAR-10 binary version)");
  std::vector<std::string> files;
  if (train)
    for (int i = 1; i <= 5; ++i) files.push_back((fs::path(dir) / ("data_batch_" + std::to_string(i) + ".bin")).string());
  else
    files.push_back((fs::path(dir) / "test_batch.bin").string());
  constexpr int64_t kRec = 1 + 3 * 32 * 32;
  std::vector<at::Tensor> ims, lbs;
  for (const std::string& p : files) {
    const std::string b = read_maybe_gz(p);
    if (b.empty()) throw err(p, "empty file");
    if (b.size() % kRec != 0) {
      const int64_t full = int64_t(b.size()) / kRec;
      throw err(p, "truncated record " + std::to_string(full) + ": " + std::to_string(b.size() % kRec) + " of " +
                       std::to_string(kRec) + " bytes (1 label + 3072 pixels) present");
    }
    const int64_t n = int64_t(b.size()) / kRec;
    at::Tensor raw = bytes_tensor(b, {n, kRec});
    at::Tensor lab = raw.select(1, 0).to(at::kLong);
    check_labels(lab, 10, p);
    lbs.push_back(lab);
    ims.push_back(raw.slice(1, 1).reshape({n, 3, 32, 32}).clone());
  }
  Dataset d;
  d.images = at::cat(ims, 0);
  d.labels = at::cat(lbs, 0);
  d.classes = 10;
  d.name = "cifar10/" + std::string(train ? "train" : "test");
  return d;
}

Dataset load_dataset(const std::string& name, const std::string& dir, bool train) {
  if (name == "fashion_mnist" || name == "fashion-mnist") return load_fashion_mnist(dir, train);
  if (name == "cifar10" || name == "cifar-10") return load_cifar10(dir, train);
  throw std::runtime_error("unknown dataset '" + name + "' (known: fashion_mnist, cifar10)");
}

Dataset take(const Dataset& d, int64_t n) {
  if (n <= 0 || n >= d.size()) return d;
  Dataset r = d;
  r.images = d.images.slice(0, 0, n);
  r.labels = d.labels.slice(0, 0, n);
  return r;
}

std::pair<Dataset, Dataset> hold_out(const Dataset& d, int64_t n) {
  if (n <= 0 || n >= d.size())
    throw std::runtime_error(d.name + ": cannot hold out " + std::to_string(n) + " of " + std::to_string(d.size()) +
                             " images (need 0 < n < " + std::to_string(d.size()) + ")");
  const int64_t k = d.size() - n;
  Dataset fit = d, val = d;
  fit.images = d.images.slice(0, 0, k);
  fit.labels = d.labels.slice(0, 0, k);
  val.images = d.images.slice(0, k);
  val.labels = d.labels.slice(0, k);
  val.name = d.name + "[" + std::to_string(k) + ":]";
  fit.name = d.name + "[:" + std::to_string(k) + "]";
  return {fit, val};
}

}  // namespace qvl::vit
