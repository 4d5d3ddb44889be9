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
