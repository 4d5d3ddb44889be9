#include <gtest/gtest.h>

#include <cstring>

#include "converter/safetensors.h"
#include "tests/support/test_support.h"

namespace qvl {
namespace {
using testing::TempDir;
using testing::write_file;

// A safetensors file from a header text and a data size (bytes of zeros).
std::string raw(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

std::string error_of(const std::string& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTripEveryDtypeWithMetadata) {
  TempDir d;
  std::vector<std::pair<std::string, at::Tensor>> ts = {
      {"a", at::randn({3, 4})},
      {"b", at::randn({5}).to(at::kBFloat16)},
      {"c", at::randn({2, 2}).to(at::kHalf)},
      {"d", at::arange(6, at::kLong)},
      {"e", at::tensor({1, 0, 1}, at::kLong).to(at::kBool)},
      {"f", at::arange(4, at::kInt).to(at::kByte)},
      {"g", at::randn({2}, at::kDouble)},
  };
  write_safetensors(d.file("x.safetensors"), ts, {{"format", "pt"}});
  SafetensorsFile f = SafetensorsFile::open(d.file("x.safetensors"));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  for (const auto& [name, t] : ts) {
    at::Tensor back = f.read(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(at::equal(back, t)) << name;
  }
}

TEST(Safetensors, TruncatedFileIsAClearError) {
  TempDir d;
  write_file(d.file("t.safetensors"), std::string("\x10\x00\x00", 3));
  EXPECT_NE(error_of(d.file("t.safetensors")).find("truncated"), std::string::npos);
  write_file(d.file("u.safetensors"),
             raw(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8));  // data cut short
  EXPECT_NE(error_of(d.file("u.safetensors")).find("beyond the data area"), std::string::npos)
      << error_of(d.file("u.safetensors"));
}

TEST(Safetensors, HeaderLengthBeyondFileIsAClearError) {
  TempDir d;
  std::string bytes = raw("{}", 0);
  bytes[0] = '\x7f';
  bytes[1] = '\x7f';  // header length 32639, file is 10 bytes
  write_file(d.file("h.safetensors"), bytes);
  EXPECT_NE(error_of(d.file("h.safetensors")).find("runs past the end of the file"), std::string::npos);
  std::string huge(8, '\0');
  huge[4] = '\x01';  // 2^32 bytes > 100 MB limit
  write_file(d.file("g.safetensors"), huge + "{}");
  EXPECT_NE(error_of(d.file("g.safetensors")).find("exceeds the 100 MB limit"), std::string::npos);
}

TEST(Safetensors, MalformedJsonIsAClearError) {
  TempDir d;
  write_file(d.file("j.safetensors"), raw("{\"w\": [", 0));
  EXPECT_NE(error_of(d.file("j.safetensors")).find("malformed JSON header"), std::string::npos);
}

TEST(Safetensors, OverlappingOffsetsAreAnError) {
  TempDir d;
  write_file(d.file("o.safetensors"),
             raw(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                 24));
  const std::string e = error_of(d.file("o.safetensors"));
  EXPECT_NE(e.find("overlap"), std::string::npos) << e;
}

// The reference library's rule: the tensors tile the data area exactly. A gap between two tensors, a first
// tensor that does not start at 0, or bytes after the last one are refused, naming the file, the tensor
// and the offsets.
TEST(Safetensors, BytesThatNoTensorCoversAreAnError) {
  TempDir d;
  write_file(d.file("gap.safetensors"),
             raw(R"({"a":{"dtype":"I8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"I8","shape":[2],"data_offsets":[6,8]}})",
                 8));
  EXPECT_EQ(error_of(d.file("gap.safetensors")),
            "'" + d.file("gap.safetensors") +
                "': tensor 'b' starts at data offset 6, but tensor 'a' ends at 2: 4 bytes in between belong to no "
                "tensor (the safetensors library refuses such a gap)");
  write_file(d.file("start.safetensors"), raw(R"({"a":{"dtype":"I8","shape":[4],"data_offsets":[4,8]}})", 8));
  EXPECT_NE(error_of(d.file("start.safetensors"))
                .find("tensor 'a' starts at data offset 4, but the data area starts at 0: 4 bytes in between"),
            std::string::npos)
      << error_of(d.file("start.safetensors"));
  write_file(d.file("tail.safetensors"), raw(R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", 7));
  EXPECT_EQ(error_of(d.file("tail.safetensors")),
            "'" + d.file("tail.safetensors") +
                "': 4 bytes after the last tensor 'a' (which ends at data offset 3) belong to no tensor: the data "
                "area is 7 bytes (the safetensors library refuses a file not fully covered)");
  write_file(d.file("none.safetensors"), raw(R"({"__metadata__":{"format":"pt"}})", 2));
  EXPECT_NE(error_of(d.file("none.safetensors")).find("2 bytes after the last tensor (the header names none)"),
            std::string::npos)
      << error_of(d.file("none.safetensors"));
}

// Empty tensors ([k, k]) are valid wherever they sit on a boundary, as the library allows.
TEST(Safetensors, EmptyTensorsOnBoundariesAreValid) {
  TempDir d;
  write_file(d.file("e.safetensors"),
             raw(R"({"z0":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("z1":{"dtype":"BF16","shape":[0,3],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                 R"("z2":{"dtype":"U8","shape":[2,0],"data_offsets":[8,8]}})",
                 8));
  EXPECT_EQ(error_of(d.file("e.safetensors")), "");
  SafetensorsFile f = SafetensorsFile::open(d.file("e.safetensors"));
  EXPECT_EQ(f.entries().size(), 5u);
  EXPECT_EQ(f.read("z1").sizes(), at::IntArrayRef({0, 3}));
  // Inside a tensor, an empty one overlaps it.
  write_file(d.file("in.safetensors"),
             raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                 8));
  EXPECT_NE(error_of(d.file("in.safetensors")).find("tensors 'a' [0, 8) and 'z' [4, 4) overlap"), std::string::npos)
      << error_of(d.file("in.safetensors"));
}

TEST(Safetensors, DtypeShapeAndByteCountMustAgree) {
  TempDir d;
  write_file(d.file("c.safetensors"), raw(R"({"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})", 16));
  EXPECT_NE(error_of(d.file("c.safetensors")).find("needs 20 bytes but data_offsets span 16"), std::string::npos)
      << error_of(d.file("c.safetensors"));
  write_file(d.file("z.safetensors"), raw(R"({"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", 8));
  EXPECT_NE(error_of(d.file("z.safetensors")).find("unknown dtype 'C64'"), std::string::npos);
}

}  // namespace
}  // namespace qvl
