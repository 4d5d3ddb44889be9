// Image classification data sets for the ViT experiments: Fashion-MNIST (gzipped IDX, as Debian's
// dataset-fashion-mnist ships it) and CIFAR-10 (the binary version). Readers only: every error names the
// file and what is wrong (missing, bad magic, size against header, label out of range, truncated record).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>

namespace qvl::vit {

struct Dataset {
  at::Tensor images;  // [N, C, H, W] uint8
  at::Tensor labels;  // [N] int64, in [0, classes)
  int64_t classes = 10;
  std::string name;   // "fashion_mnist/train", ...
  int64_t size() const { return labels.size(0); }
};

// Where Debian's dataset-fashion-mnist puts the four .gz files.
const char* default_fashion_mnist_dir();

// The whole file, gunzipped when it is a gzip stream (zlib; a plain file is read as is). Errors: missing
// file, corrupt or truncated gzip stream.
std::string read_maybe_gz(const std::string& path);

// IDX (big-endian): magic 0x0000 08 NDIM (unsigned bytes), NDIM uint32 sizes, then the data. Checks that
// the size matches the header exactly.
struct Idx {
  std::vector<int64_t> dims;
  std::string data;
};
Idx parse_idx(const std::string& bytes, const std::string& where, int64_t expect_ndim);

// {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz in `dir` (or without .gz). train = true: the 60,000
// training images, else the 10,000 test images. Labels must be < 10 and the counts must agree.
Dataset load_fashion_mnist(const std::string& dir, bool train);

// data_batch_1..5.bin (train) or test_batch.bin in `dir`: records of 1 label byte + 3072 pixel bytes
// (3 x 32 x 32, channel-major). Labels must be < 10; a file size not a multiple of 3073 is a truncated record.
Dataset load_cifar10(const std::string& dir, bool train);

// "fashion_mnist" or "cifar10"; dir "" = the default folder (Fashion-MNIST only).
Dataset load_dataset(const std::string& name, const std::string& dir, bool train);

// The first n images (n <= 0 or >= size: all).
Dataset take(const Dataset& d, int64_t n);

// A validation split: {the first size-n images, the last n} (names marked "[:k]" and "[k:]"); 0 < n < size.
std::pair<Dataset, Dataset> hold_out(const Dataset& d, int64_t n);

}  // namespace qvl::vit
