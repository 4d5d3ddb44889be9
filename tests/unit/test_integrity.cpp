// Damaged recordings and weights read as damaged (instrument/h5io.h, "Integrity"; instrument/recording.h):
// every dataset every writer makes is checksummed, a flipped byte is a CorruptError naming the file and the
// dataset, a missing call group is an error naming the call, and files written before all this still read,
// with one note each. The checksum itself is checked against HDF5's own filter.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "converter/convert.h"
#include "instrument/h5io.h"
#include "instrument/recording.h"
#include "tests/support/test_support.h"
#include "tests/unit/converter_fixtures.h"

#ifndef QVL_PYTHON
#define QVL_PYTHON ""
#endif

namespace qvl::testing {
namespace {
namespace fs = std::filesystem;

const std::string kFp32 = "recordings/tiny_fp32.h5";

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// The raw stored bytes (data + its 4 checksum bytes) of chunk `index` of a dataset, and where they lie.
struct RawChunk {
  std::vector<uint8_t> bytes;
  uint64_t file_offset = 0;
};
RawChunk raw_chunk(hid_t file, const std::string& path, hsize_t index) {
  h5::Handle ds(H5Dopen2(file, path.c_str(), H5P_DEFAULT), H5Dclose);
  EXPECT_TRUE(ds.valid()) << path;
  h5::Handle space(H5Dget_space(ds.id()), H5Sclose);
  std::vector<hsize_t> offset(static_cast<size_t>(H5Sget_simple_extent_ndims(space.id())));
  unsigned mask = 0;
  haddr_t addr = 0;
  hsize_t size = 0;
  EXPECT_GE(H5Dget_chunk_info(ds.id(), space.id(), index, offset.data(), &mask, &addr, &size), 0) << path;
  RawChunk c;
  c.bytes.resize(size);
  c.file_offset = addr;
  uint32_t filters = 0;
  EXPECT_GE(H5Dread_chunk(ds.id(), H5P_DEFAULT, offset.data(), &filters, c.bytes.data()), 0) << path;
  return c;
}

// Flips 4 bytes in the middle of the stored data of a chunked dataset (its chunk 0), as a bad disk would.
void damage_chunk(const std::string& file, const std::string& dataset) {
  uint64_t at = 0;
  {
    h5::File f = h5::open_read(file);
    RawChunk c = raw_chunk(f.id(), dataset, 0);
    ASSERT_GT(c.bytes.size(), 8u) << dataset;
    at = c.file_offset + (c.bytes.size() - 4) / 2;
  }
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  char b[4];
  io.seekg(static_cast<std::streamoff>(at));
  io.read(b, 4);
  for (char& x : b) x = static_cast<char>(~x);
  io.seekp(static_cast<std::streamoff>(at));
  io.write(b, 4);
}

// --- files as qvl wrote them before checksums ---------------------------------------------------------
void copy_attrs(hid_t from, hid_t to, bool root) {
  std::vector<std::string> names;
  hsize_t idx = 0;
  H5Aiterate2(
      from, H5_INDEX_NAME, H5_ITER_INC, &idx,
      [](hid_t, const char* name, const H5A_info_t*, void* data) -> herr_t {
        static_cast<std::vector<std::string>*>(data)->push_back(name);
        return 0;
      },
      &names);
  for (const auto& name : names) {
    if (root && (name == "checksums" || name == "num_calls" || name == "call_summary")) continue;
    if (root && name == "format_version") {
      h5::set_attr(to, name, static_cast<int64_t>(1));
      continue;
    }
    h5::Handle a(H5Aopen(from, name.c_str(), H5P_DEFAULT), H5Aclose);
    h5::Handle type(H5Aget_type(a.id()), H5Tclose);
    h5::Handle space(H5Aget_space(a.id()), H5Sclose);
    const hssize_t n = H5Sget_simple_extent_npoints(space.id());
    std::vector<char> buf(H5Tget_size(type.id()) * static_cast<size_t>(n));
    ASSERT_GE(H5Aread(a.id(), type.id(), buf.data()), 0) << name;
    h5::Handle b(H5Acreate2(to, name.c_str(), type.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    ASSERT_GE(H5Awrite(b.id(), type.id(), buf.data()), 0) << name;
    if (H5Tis_variable_str(type.id()) > 0)
      for (hssize_t i = 0; i < n; ++i) H5free_memory(reinterpret_cast<char**>(buf.data())[i]);
  }
}

void copy_tree(hid_t from, hid_t to) {
  for (const auto& name : h5::children(from)) {
    if (h5::is_group(from, name)) {
      h5::Handle g = h5::open_group(from, name, "legacy copy");
      h5::Handle h = h5::make_group(to, name);
      copy_attrs(g.id(), h.id(), false);
      copy_tree(g.id(), h.id());
      continue;
    }
    h5::Handle ds(H5Dopen2(from, name.c_str(), H5P_DEFAULT), H5Dclose);
    h5::Handle type(H5Dget_type(ds.id()), H5Tclose);
    h5::Handle space(H5Dget_space(ds.id()), H5Sclose);
    const hssize_t n = H5Sget_simple_extent_npoints(space.id());
    std::vector<char> buf(H5Tget_size(type.id()) * static_cast<size_t>(n) + 1);
    if (n > 0) ASSERT_GE(H5Dread(ds.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()), 0) << name;
    // The default creation properties: contiguous, no filter, no checksum.
    h5::Handle out(H5Dcreate2(to, name.c_str(), type.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                   H5Dclose);
    if (n > 0) ASSERT_GE(H5Dwrite(out.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()), 0) << name;
    copy_attrs(ds.id(), out.id(), false);
  }
}

// `src` rewritten as qvl wrote files before checksums: HDF5's earliest format, every dataset contiguous and
// unfiltered, format_version 1, no `checksums`, `num_calls` or `call_summary` root attribute.
void write_legacy_copy(const std::string& src, const std::string& dst) {
  h5::File in = h5::open_read(src);
  h5::Handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_link_creation_order(fcpl.id(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
  h5::Handle out(H5Fcreate(dst.c_str(), H5F_ACC_TRUNC, fcpl.id(), H5P_DEFAULT), H5Fclose);
  ASSERT_TRUE(out.valid()) << dst;
  copy_attrs(in.id(), out.id(), true);
  copy_tree(in.id(), out.id());
}

// A converted tiny model (a fresh qvl.weights file of this build).
std::string converted_tiny(const TempDir& d) {
  const std::string out = d.file("tiny.h5");
  ConvertOptions opt;
  opt.durable = false;
  convert_checkpoint(tiny_checkpoint_dir(), out, opt);
  return out;
}

// --- the pieces ---------------------------------------------------------------------------------------
TEST(Integrity, ChunkDimsAreContiguousRunsUnderTheLimit) {
  using V = std::vector<hsize_t>;
  EXPECT_EQ(h5::chunk_dims({48, 1176}, 4, h5::kChunkBytes), (V{48, 1176}));     // small: one chunk
  EXPECT_EQ(h5::chunk_dims({152064, 3584}, 2, h5::kChunkBytes), (V{2340, 3584}));  // rows of 7 KiB
  EXPECT_EQ(h5::chunk_dims({5000000}, 4, h5::kChunkBytes), (V{4194304}));
  EXPECT_EQ(h5::chunk_dims({2, 3, 4000, 1000}, 4, h5::kGzipChunkBytes), (V{1, 1, 262, 1000}));
  EXPECT_EQ(h5::chunk_dims({3, 8000000}, 4, h5::kChunkBytes), (V{1, 4194304}));  // a row above the limit
  for (const V& dims : {V{7}, V{1280, 3, 2, 14, 14}, V{151936, 8192}, V{3, 5, 9000001}}) {
    const V c = h5::chunk_dims(dims, 2, h5::kChunkBytes);
    uint64_t bytes = 2;
    for (hsize_t x : c) bytes *= x;
    EXPECT_LE(bytes, h5::kChunkBytes);
    // chunk = [1, ..., 1, k, whole dims...]
    size_t k = dims.size() - 1;
    while (k > 0 && c[k] == dims[k]) --k;
    for (size_t i = 0; i < k; ++i) EXPECT_EQ(c[i], 1u);
    EXPECT_GE(c[k], 1u);
  }
}

// Our Fletcher-32 is the one HDF5's filter stores: compare it with the checksum HDF5 appended to chunks it
// wrote itself (odd and even lengths, one chunk and several, an edge chunk).
TEST(Integrity, Fletcher32IsTheChecksumHdf5Stores) {
  TempDir d;
  const std::vector<std::pair<std::string, at::Tensor>> ts = {
      {"odd", at::randint(0, 256, {1001}, at::kByte)},
      {"all_ff", at::full({1441}, 255, at::kByte)},  // the largest sums: 4 blocks of 360 words and an odd byte
      {"one", at::randint(0, 256, {1}, at::kByte)},
      {"rows", at::randn({300, 7})},
      {"big", at::randn({4500000})},  // 18 MB: a 16 MiB chunk and an edge chunk
  };
  {
    h5::File f = h5::create_truncate(d.file("h.h5"));
    for (const auto& [name, t] : ts) h5::write_tensor(f.id(), name, t, 0);
  }
  h5::File f = h5::open_read(d.file("h.h5"));
  for (const auto& [name, t] : ts) {
    h5::Handle ds(H5Dopen2(f.id(), name.c_str(), H5P_DEFAULT), H5Dclose);
    h5::Handle space(H5Dget_space(ds.id()), H5Sclose);
    hsize_t chunks = 0;
    ASSERT_GE(H5Dget_num_chunks(ds.id(), space.id(), &chunks), 0);
    EXPECT_EQ(chunks, name == "big" ? 2u : 1u) << name;
    for (hsize_t i = 0; i < chunks; ++i) {
      RawChunk c = raw_chunk(f.id(), name, i);
      const size_t n = c.bytes.size() - 4;
      uint32_t stored = 0;
      for (int b = 0; b < 4; ++b) stored |= static_cast<uint32_t>(c.bytes[n + b]) << (8 * b);
      EXPECT_EQ(h5::fletcher32(c.bytes.data(), n), stored) << name << " chunk " << i;
    }
  }
  // A hand-checked input: "ab" = one word 0x6162 -> sum1 = sum2 = 0x6162.
  const uint8_t ab[2] = {'a', 'b'};
  EXPECT_EQ(h5::fletcher32(ab, 2), 0x61626162u);
}

// The converter's path: chunks written raw with our checksum, read back by HDF5 (which verifies it) and by
// ChunkReader; a tensor with an edge chunk, a scalar and an empty one.
TEST(Integrity, StreamedDatasetsReadBackThroughHdf5) {
  TempDir d;
  const at::Tensor big = at::randn({3000, 2000});                           // 24 MB: chunks of 2097 + 903 rows
  const at::Tensor half = at::randn({5, 7}).to(at::kBFloat16);
  const at::Tensor scalar = at::scalar_tensor(2.5, at::kDouble), empty = at::zeros({0, 3}, at::kFloat);
  {
    h5::WeightsWriter w(d.file("w.h5"), {{"config", "{}"}});
    for (const auto& [name, t] : std::vector<std::pair<std::string, at::Tensor>>{
             {"a.big", big}, {"a.half", half}, {"b.scalar", scalar}, {"b.empty", empty}}) {
      h5::DatasetStream s = w.stream(name, t.scalar_type(), t.sizes());
      const at::Tensor flat = t.contiguous().view({-1});
      int64_t at = 0;
      for (uint64_t n = s.next_elems(); n > 0; n = s.next_elems()) {
        std::memcpy(s.buffer(), static_cast<const uint8_t*>(flat.data_ptr()) + at * t.element_size(),
                    n * t.element_size());
        s.put();
        at += static_cast<int64_t>(n);
      }
      EXPECT_EQ(at, t.numel()) << name;
    }
    w.commit();
  }
  EXPECT_EQ(h5::unchecksummed_datasets(d.file("w.h5")), std::vector<std::string>{});
  h5::WeightsFile back = h5::read_weights(d.file("w.h5"));
  EXPECT_TRUE(at::equal(back.weights.tensor("a.big"), big));
  EXPECT_TRUE(at::equal(back.weights.tensor("a.half"), half));
  EXPECT_EQ(back.weights.tensor("b.scalar").dim(), 0);
  EXPECT_EQ(back.weights.tensor("b.scalar").item<double>(), 2.5);
  EXPECT_EQ(back.weights.tensor("b.empty").sizes(), at::IntArrayRef({0, 3}));
  h5::File f = h5::open_read(d.file("w.h5"));
  std::vector<uint8_t> buf;
  h5::ChunkReader r(f.id(), "a/big", "w.h5:/a/big", &buf);
  ASSERT_TRUE(r.usable());
  std::vector<float> got;
  for (uint64_t n = r.next_elems(); n > 0; n = r.next_elems()) {
    const float* p = reinterpret_cast<const float*>(r.next());
    got.insert(got.end(), p, p + n);
  }
  EXPECT_TRUE(at::equal(at::from_blob(got.data(), {3000, 2000}), big));
}

// --- every writer checksums every dataset ------------------------------------------------------------
TEST(Integrity, EveryDatasetOfEveryWriterIsChecksummed) {
  TempDir d;
  RecordingWriter rw(d.file("r.h5"), {{"dtype", "float32"}, {"producer", "qvl test"}});
  const int64_t c = rw.begin("m", "M",
                             Value::dict({{"x", Value::of(at::randn({40, 30}))},
                                          {"bf", Value::of(at::randn({3}).to(at::kBFloat16))},
                                          {"s", Value::of(at::scalar_tensor(1.5))},
                                          {"e", Value::of(at::zeros({2, 0}))},
                                          {"n", Value::of_int(3)},
                                          {"f", Value::of_float(0.5)},
                                          {"b", Value::of_bool(true)}}),
                             "{}");
  rw.end(c, Value::of(at::ones({2})));
  rw.close();
  std::vector<std::string> files = {d.file("r.h5")};
  if (file_exists(tiny_checkpoint_dir() + "/model.safetensors")) {
    files.push_back(converted_tiny(d));
    ConvertOptions gz;
    gz.gzip_level = 4;
    gz.durable = false;
    convert_checkpoint(tiny_checkpoint_dir(), d.file("gz.h5"), gz);
    files.push_back(d.file("gz.h5"));
  }
  // The committed files, written by the Python recorder (h5py) and by qvl convert.
  for (const char* rel : {"recordings/tiny_fp32.h5", "recordings/tiny_bf16.h5", "weights/tiny.h5"})
    if (file_exists(data_path(rel))) files.push_back(data_path(rel));
  for (const auto& path : files) {
    SCOPED_TRACE(path);
    EXPECT_EQ(h5::unchecksummed_datasets(path), std::vector<std::string>{});
    h5::File f = h5::open_read(path);
    EXPECT_EQ(h5::attr_str(f.id(), "checksums", path), h5::kChecksums);
    EXPECT_EQ(h5::attr_int(f.id(), "format_version", path), 2);
  }
  EXPECT_EQ(Recording::open(d.file("r.h5")).calls().size(), 1u);
}

// The Python recorder chunks as chunk_dims does (recordings/record_reference.py: chunk_shape).
TEST(Integrity, PythonAndCppChunkAlike) {
  QVL_REQUIRE_FILE(data_path(kFp32));
  size_t chunked = 0;
  for (const char* rel : {"recordings/tiny_fp32.h5", "recordings/tiny_bf16.h5"}) {
    h5::File f = h5::open_read(data_path(rel));
    std::function<void(hid_t, const std::string&)> walk = [&](hid_t g, const std::string& at) {
      for (const auto& name : h5::children(g)) {
        if (h5::is_group(g, name)) {
          h5::Handle sub = h5::open_group(g, name, rel);
          walk(sub.id(), at + "/" + name);
          continue;
        }
        h5::Handle ds(H5Dopen2(g, name.c_str(), H5P_DEFAULT), H5Dclose);
        h5::Handle dcpl(H5Dget_create_plist(ds.id()), H5Pclose);
        if (H5Pget_layout(dcpl.id()) != H5D_CHUNKED) continue;
        h5::Handle space(H5Dget_space(ds.id()), H5Sclose), type(H5Dget_type(ds.id()), H5Tclose);
        const int nd = H5Sget_simple_extent_ndims(space.id());
        std::vector<hsize_t> dims(static_cast<size_t>(nd)), chunk(static_cast<size_t>(nd));
        H5Sget_simple_extent_dims(space.id(), dims.data(), nullptr);
        H5Pget_chunk(dcpl.id(), nd, chunk.data());
        const bool gzip = H5Pget_nfilters(dcpl.id()) > 1;
        EXPECT_EQ(chunk, h5::chunk_dims(dims, H5Tget_size(type.id()), gzip ? h5::kGzipChunkBytes : h5::kChunkBytes))
            << rel << ":" << at << "/" << name;
        ++chunked;
      }
    };
    walk(f.id(), "");
  }
  EXPECT_GT(chunked, 100u);
}

// --- damage --------------------------------------------------------------------------------------------
TEST(Integrity, FlippedBytesInADatasetAreCorruption) {
  TempDir d;
  {
    h5::File f = h5::create_truncate(d.file("c.h5"));
    h5::write_tensor(f.id(), "plain", at::randn({64, 64}), 0);
    h5::write_tensor(f.id(), "gzip", at::randn({64, 64}), 4);
  }
  for (const std::string name : {"plain", "gzip"}) {
    damage_chunk(d.file("c.h5"), name);
    h5::File f = h5::open_read(d.file("c.h5"));
    try {
      h5::read_tensor(f.id(), name, "'" + d.file("c.h5") + "':/" + name);
      ADD_FAILURE() << name << ": the damage went unnoticed";
    } catch (const h5::CorruptError& e) {
      EXPECT_NE(std::string(e.what()).find("'" + d.file("c.h5") + "':/" + name + ": corrupt: the data of dataset '" +
                                           name + "' fails its Fletcher-32 checksum"),
                std::string::npos)
          << e.what();
    }
  }
  // The converter's own reader (qvl convert --to-safetensors) verifies each chunk itself.
  h5::File f = h5::open_read(d.file("c.h5"));
  std::vector<uint8_t> buf;
  h5::ChunkReader r(f.id(), "plain", "c.h5:/plain", &buf);
  ASSERT_TRUE(r.usable());
  EXPECT_THROW(
      {
        try {
          r.next();
        } catch (const h5::CorruptError& e) {
          EXPECT_NE(std::string(e.what()).find("c.h5:/plain: corrupt: the chunk at [0, 0] fails its Fletcher-32"),
                    std::string::npos)
              << e.what();
          throw;
        }
      },
      h5::CorruptError);
}

// A scalar lives in its object header, which the HDF5 1.8 format checksums.
TEST(Integrity, DamagedScalarIsCorruption) {
  TempDir d;
  const int64_t marker = 0x0123456789abcdefLL;
  {
    h5::File f = h5::create_truncate(d.file("s.h5"));
    h5::write_value(f.id(), "n", Value::of_int(marker));
  }
  std::string bytes;
  {
    std::ifstream in(d.file("s.h5"), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const size_t at = bytes.find(std::string(reinterpret_cast<const char*>(&marker), 8));
  ASSERT_NE(at, std::string::npos) << "the scalar is not stored in the file as such";
  bytes[at] = static_cast<char>(bytes[at] ^ 1);
  write_file(d.file("s.h5"), bytes);
  h5::File f = h5::open_read(d.file("s.h5"));
  try {
    const Value v = h5::read_value(f.id(), "n", "'" + d.file("s.h5") + "'");
    ADD_FAILURE() << "the damage went unnoticed: read " << v.i;
  } catch (const h5::CorruptError& e) {
    EXPECT_NE(std::string(e.what()).find("the file is corrupt (HDF5: "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
}

// qvl check on a recording and on weights with 4 flipped bytes: one error naming the dataset, exit 2.
TEST(Integrity, CheckReportsDamageAsCorruptionNotAsAMismatch) {
  QVL_REQUIRE_FILE(data_path(kFp32));
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  const std::string weights = converted_tiny(d);
  fs::copy_file(data_path(kFp32), d.file("rec.h5"));
  damage_chunk(d.file("rec.h5"), "calls/000007/outputs/out");
  auto r = run_qvl("check " + weights + " " + d.file("rec.h5"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("qvl check: error: '" + d.file("rec.h5") +
                          "':/calls/000007/outputs/out: corrupt: the data of dataset 'out' fails its Fletcher-32 checksum"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("summary:"), std::string::npos) << r.output;

  damage_chunk(weights, "model/visual/blocks/0/mlp/down_proj/weight");
  r = run_qvl("check " + weights + " " + data_path(kFp32));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("qvl check: error: '" + weights +
                          "':/model.visual.blocks.0.mlp.down_proj.weight: corrupt: the data of dataset 'weight' fails "
                          "its Fletcher-32 checksum"),
            std::string::npos)
      << r.output;
  // --to-safetensors reads chunk by chunk and verifies them itself.
  r = run_qvl("convert --to-safetensors " + weights + " " + d.file("back") + " --no-progress");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model/visual/blocks/0/mlp/down_proj/weight: corrupt: the chunk at [0, 0] fails its "
                          "Fletcher-32 checksum"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(d.file("back")));
}

// --- missing calls -------------------------------------------------------------------------------------
TEST(Integrity, CallGroupsMustBeContiguousAndCounted) {
  auto error = [](std::vector<std::string> names, int64_t stated) -> std::string {
    try {
      check_call_groups(names, stated, "x.h5");
    } catch (const h5::CorruptError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error({"000000", "000001", "000002"}, 3), "");
  EXPECT_EQ(error({"000000", "000001", "000002"}, -1), "");  // older file: no count, no gap
  EXPECT_EQ(error({}, 0), "");
  EXPECT_EQ(error({"000000", "000002"}, 3), "recording 'x.h5': call 000001 missing (root says 3 calls; found 2)");
  EXPECT_EQ(error({"000000", "000001"}, 3), "recording 'x.h5': call 000002 missing (root says 3 calls; found 2)");
  EXPECT_EQ(error({"000000", "000003"}, -1),
            "recording 'x.h5': calls 000001, 000002 missing (found 2 up to call 000003; this older file states no "
            "count)");
  EXPECT_EQ(error({"000000", "000001", "000002"}, 2),
            "recording 'x.h5': call 000002 beyond the stated count (root says 2 calls; found 3)");
  EXPECT_EQ(error({"000000", "junk"}, 2),
            "recording 'x.h5': /calls holds 'junk', which is not a call group (000000, 000001, ...)");
  std::vector<std::string> many;
  for (int i = 0; i < 3; ++i) many.push_back(call_group_name(i));
  EXPECT_EQ(error(many, 10),
            "recording 'x.h5': calls 000003, 000004, 000005, 000006, 000007 and 2 more missing (root says 10 calls; "
            "found 3)");
}

// The root attribute call_summary (what a recording holds, read without opening its call groups): both writers
// store it, it equals the summary of the calls, a file that disagrees with it is corrupt, and a file written
// before it is summarised from its calls.
TEST(Integrity, CallSummaryIsStoredCheckedAndDerivedForOldFiles) {
  TempDir d;
  {
    RecordingWriter rw(d.file("r.h5"), {{"dtype", "float32"}, {"producer", "qvl test"}});
    for (int step : {-1, 0, 1}) {
      const std::string settings = step < 0 ? "{}" : "{\"generate_step\": " + std::to_string(step) + "}";
      const int64_t top = rw.begin("", "Top", Value::dict({{"x", Value::of(at::ones({2}))}}), settings);
      const int64_t inner = rw.begin("a", "Inner", Value::dict({{"x", Value::of(at::ones({2}))}}), settings);
      rw.end(inner, Value::of(at::ones({2})));
      rw.end(top, Value::of(at::ones({2})));
    }
    rw.close();
  }
  const CallSummary s = Recording::summary(d.file("r.h5"));
  EXPECT_EQ(s.classes, (std::map<std::string, int64_t>{{"Inner", 3}, {"Top", 3}}));
  EXPECT_EQ(s.generate_steps, 2);
  EXPECT_TRUE(s.has("Inner"));
  EXPECT_FALSE(s.has("Qwen2_5_VLDecoderLayer"));
  EXPECT_TRUE(s == CallSummary::of(Recording::open(d.file("r.h5")).calls()));

  // The Python recorder's files carry the same attribute, equal to their calls' summary.
  QVL_REQUIRE_FILE(data_path(kFp32));
  {
    h5::File f = h5::open_read(data_path(kFp32));
    EXPECT_TRUE(h5::has_attr(f.id(), "call_summary")) << kFp32;
  }
  EXPECT_TRUE(Recording::summary(data_path(kFp32)) == CallSummary::of(Recording::open(data_path(kFp32)).calls()));

  // A summary that disagrees with the calls: open() names both.
  fs::copy_file(d.file("r.h5"), d.file("bad.h5"));
  {
    h5::File f = h5::open_write(d.file("bad.h5"));
    ASSERT_GE(H5Adelete(f.id(), "call_summary"), 0);
    h5::set_attr(f.id(), "call_summary", std::string(R"({"classes": {"Inner": 3, "Top": 2}, "generate_steps": 2})"));
  }
  try {
    Recording::open(d.file("bad.h5"));
    ADD_FAILURE() << "a recording whose calls disagree with call_summary opened";
  } catch (const h5::CorruptError& e) {
    EXPECT_NE(std::string(e.what()).find("do not match the root attribute call_summary"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.h5"), std::string::npos) << e.what();
  }

  // Written before the attribute: summarised from the calls.
  write_legacy_copy(d.file("r.h5"), d.file("old.h5"));
  EXPECT_TRUE(Recording::summary(d.file("old.h5")) == s);
}

// A call group deleted from a recording (as h5py's `del f["calls/000010"]` does): `qvl check` stops with
// the call named and exits non-zero, instead of checking one call fewer.
TEST(Integrity, DeletedCallGroupIsAnError) {
  QVL_REQUIRE_FILE(data_path(kFp32));
  TempDir d;
  const size_t n = Recording::open(data_path(kFp32)).calls().size();
  ASSERT_GT(n, 11u);
  auto delete_group = [&](const std::string& file, const std::string& group) {
    h5::File f = h5::open_write(file);
    ASSERT_GE(H5Ldelete(f.id(), ("calls/" + group).c_str(), H5P_DEFAULT), 0) << group;
  };
  const std::string total = std::to_string(n), fewer = std::to_string(n - 1);
  fs::copy_file(data_path(kFp32), d.file("gap.h5"));
  delete_group(d.file("gap.h5"), "000010");
  auto r = run_qvl("check " + data_path("weights/tiny") + " " + d.file("gap.h5"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output, "qvl check: error: recording '" + d.file("gap.h5") + "': call 000010 missing (root says " +
                          total + " calls; found " + fewer + ")\n");
  // A short file: the last call gone.
  fs::copy_file(data_path(kFp32), d.file("short.h5"));
  delete_group(d.file("short.h5"), call_group_name(static_cast<int64_t>(n) - 1));
  try {
    Recording::open(d.file("short.h5"));
    ADD_FAILURE() << "a truncated recording opened";
  } catch (const h5::CorruptError& e) {
    EXPECT_EQ(std::string(e.what()), "recording '" + d.file("short.h5") + "': call " +
                                         call_group_name(static_cast<int64_t>(n) - 1) + " missing (root says " +
                                         total + " calls; found " + fewer + ")");
  }
  // An older file (no count) still has its gap seen.
  write_legacy_copy(data_path(kFp32), d.file("old.h5"));
  delete_group(d.file("old.h5"), "000010");
  ::testing::internal::CaptureStderr();
  EXPECT_THROW(Recording::open(d.file("old.h5")), h5::CorruptError);
  ::testing::internal::GetCapturedStderr();
}

// --- files written before ------------------------------------------------------------------------------
// record_reference.py rewrite: an older recording written again with checksums and the count, every
// tensor, scalar and attribute unchanged (read back through qvl's reader and compared).
TEST(Integrity, RewriteAddsChecksumsAndKeepsEveryValue) {
  const std::string python = QVL_PYTHON;
  if (python.empty() || !fs::exists(python))
    GTEST_SKIP() << "no pinned Python environment (configure with -DQVL_PYTHON=..., see scripts/setup.sh)";
  QVL_REQUIRE_FILE(data_path(kFp32));
  TempDir d;
  write_legacy_copy(data_path(kFp32), d.file("old.h5"));
  const std::string cmd = python + " " + data_path("recordings/record_reference.py") + " rewrite " +
                          d.file("old.h5") + " " + d.file("new.h5") + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  EXPECT_EQ(h5::unchecksummed_datasets(d.file("new.h5")), std::vector<std::string>{});
  ::testing::internal::CaptureStderr();
  const Recording a = Recording::open(d.file("old.h5")), b = Recording::open(d.file("new.h5"));
  ::testing::internal::GetCapturedStderr();
  ASSERT_EQ(a.calls().size(), b.calls().size());
  std::function<void(const Value&, const Value&, const std::string&)> same = [&](const Value& x, const Value& y,
                                                                                 const std::string& at) {
    ASSERT_EQ(x.kind, y.kind) << at;
    EXPECT_EQ(x.s, y.s) << at;
    EXPECT_EQ(x.keys, y.keys) << at;
    EXPECT_EQ(x.i, y.i) << at;
    EXPECT_EQ(x.b, y.b) << at;
    EXPECT_TRUE(x.f == y.f || (x.f != x.f && y.f != y.f)) << at;
    if (x.is_tensor()) {
      EXPECT_EQ(x.tensor.scalar_type(), y.tensor.scalar_type()) << at;
      EXPECT_TRUE(x.tensor.sizes() == y.tensor.sizes() && at::equal(x.tensor, y.tensor)) << at;
    }
    ASSERT_EQ(x.items.size(), y.items.size()) << at;
    for (size_t i = 0; i < x.items.size(); ++i) same(x.items[i], y.items[i], at + "/" + std::to_string(i));
  };
  for (size_t i = 0; i < a.calls().size(); ++i) {
    EXPECT_EQ(a.calls()[i].settings, b.calls()[i].settings);
    EXPECT_EQ(a.calls()[i].module_path, b.calls()[i].module_path);
    const RecordedCall x = a.load(i), y = b.load(i);
    same(x.inputs, y.inputs, a.calls()[i].group + "/inputs");
    same(x.outputs, y.outputs, a.calls()[i].group + "/outputs");
  }
  h5::File f = h5::open_read(d.file("new.h5"));
  EXPECT_EQ(h5::attr_int(f.id(), "num_calls", "new.h5"), static_cast<int64_t>(a.calls().size()));
  EXPECT_EQ(h5::attr_str(f.id(), "config", "new.h5"), a.attr("config"));
}

TEST(Integrity, OldFilesStillReadWithOneNoteEach) {
  QVL_REQUIRE_FILE(data_path(kFp32));
  QVL_REQUIRE_FILE(tiny_checkpoint_dir() + "/model.safetensors");
  TempDir d;
  const std::string weights = converted_tiny(d);
  write_legacy_copy(weights, d.file("old_weights.h5"));
  write_legacy_copy(data_path(kFp32), d.file("old_rec.h5"));
  for (const char* name : {"old_weights.h5", "old_rec.h5"}) {
    EXPECT_FALSE(h5::unchecksummed_datasets(d.file(name)).empty()) << name << " is not an old-style file";
  }
  // In-process: the same tensors, one note per file however often it is opened.
  ::testing::internal::CaptureStderr();
  const h5::WeightsFile a = h5::read_weights(weights), b = h5::read_weights(d.file("old_weights.h5"));
  h5::read_weights(d.file("old_weights.h5"));
  const Recording rec = Recording::open(d.file("old_rec.h5"));
  Recording::open(d.file("old_rec.h5"));
  const std::string err = ::testing::internal::GetCapturedStderr();
  for (const auto& [k, t] : a.weights.flatten()) EXPECT_TRUE(at::equal(b.weights.tensor(k), t)) << k;
  EXPECT_EQ(rec.calls().size(), Recording::open(data_path(kFp32)).calls().size());
  EXPECT_EQ(count_of(err, "note:"), 2u) << err;
  EXPECT_EQ(count_of(err, "qvl: note: '" + d.file("old_weights.h5") + "' carries no checksums"), 1u) << err;
  EXPECT_EQ(count_of(err, "qvl: note: '" + d.file("old_rec.h5") + "' carries no checksums"), 1u) << err;
  // End to end: qvl check passes on both, with one note each; the old layout exports bit-exact.
  auto r = run_qvl("check " + d.file("old_weights.h5") + " " + d.file("old_rec.h5"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count_of(r.output, "carries no checksums"), 2u) << r.output;
  EXPECT_NE(r.output.find(" 0 failed"), std::string::npos) << r.output;
  r = run_qvl("convert --to-safetensors " + d.file("old_weights.h5") + " " + d.file("back") + " --no-progress");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count_of(r.output, "carries no checksums"), 1u) << r.output;
  std::ifstream x(tiny_checkpoint_dir() + "/model.safetensors", std::ios::binary),
      y(d.file("back/model.safetensors"), std::ios::binary);
  EXPECT_TRUE(std::equal(std::istreambuf_iterator<char>(x), std::istreambuf_iterator<char>(),
                         std::istreambuf_iterator<char>(y), std::istreambuf_iterator<char>()))
      << "the export of the old-style file differs from the transformers checkpoint";
}

}  // namespace
}  // namespace qvl::testing
