#include <gtest/gtest.h>

#include <filesystem>

#include "instrument/h5io.h"
#include "instrument/recording.h"
#include "tests/support/test_support.h"

namespace qvl {
namespace {
using testing::TempDir;

at::Tensor sample(at::ScalarType t) {
  at::Tensor x = at::arange(-6, 6, at::kDouble).reshape({3, 4}) * 0.37;
  if (t == at::kBool) return x.gt(0);
  if (!at::isFloatingType(t)) return at::arange(-6, 6, at::kLong).reshape({3, 4}).to(t);
  return x.to(t);
}

TEST(H5io, TensorRoundTripIsBitExactForEveryDtype) {
  TempDir d;
  const std::vector<at::ScalarType> types = {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16, at::kLong,
                                             at::kInt,    at::kShort, at::kChar, at::kByte,     at::kBool};
  {
    h5::File f = h5::create_truncate(d.file("t.h5"));
    for (auto t : types) h5::write_tensor(f.id(), dtype_name(t), sample(t), 4);
    h5::write_tensor(f.id(), "scalar", at::scalar_tensor(3.5, at::kFloat));
    h5::write_tensor(f.id(), "empty", at::zeros({0, 5}, at::kFloat));
    h5::write_tensor(f.id(), "big", at::randn({300, 7}), 6);  // chunked + gzip + shuffle
  }
  h5::File f = h5::open_read(d.file("t.h5"));
  for (auto t : types) {
    at::Tensor back = h5::read_tensor(f.id(), dtype_name(t), "test");
    EXPECT_EQ(back.scalar_type(), t) << dtype_name(t);
    EXPECT_TRUE(at::equal(back, sample(t))) << dtype_name(t);
  }
  EXPECT_EQ(h5::read_tensor(f.id(), "scalar", "test").dim(), 0);
  EXPECT_EQ(h5::read_tensor(f.id(), "scalar", "test").item<float>(), 3.5f);
  EXPECT_EQ(h5::read_tensor(f.id(), "empty", "test").sizes(), at::IntArrayRef({0, 5}));
}

TEST(H5io, Bfloat16IsStoredAsUint16Bits) {
  TempDir d;
  at::Tensor x = at::randn({5}).to(at::kBFloat16);
  {
    h5::File f = h5::create_truncate(d.file("b.h5"));
    h5::write_tensor(f.id(), "x", x);
  }
  h5::File f = h5::open_read(d.file("b.h5"));
  h5::Handle ds(H5Dopen2(f.id(), "x", H5P_DEFAULT), H5Dclose);
  h5::Handle t(H5Dget_type(ds.id()), H5Tclose);
  EXPECT_EQ(H5Tget_class(t.id()), H5T_INTEGER);
  EXPECT_EQ(H5Tget_size(t.id()), 2u);
  EXPECT_EQ(h5::attr_str(ds.id(), "dtype", "x"), "bfloat16");
}

TEST(H5io, UnknownDtypeAttributeIsAClearError) {
  TempDir d;
  {
    h5::File f = h5::create_truncate(d.file("u.h5"));
    h5::write_tensor(f.id(), "x", at::zeros({2}, at::kFloat));
    h5::Handle ds(H5Dopen2(f.id(), "x", H5P_DEFAULT), H5Dclose);
    h5::set_attr(ds.id(), "dtype", std::string("complex32"));
  }
  h5::File f = h5::open_read(d.file("u.h5"));
  try {
    h5::read_tensor(f.id(), "x", "u.h5:/x");
    FAIL() << "expected an error";
  } catch (const h5::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("unknown dtype 'complex32'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("u.h5:/x"), std::string::npos) << msg;
  }
}

TEST(H5io, DtypeAttributeThatDisagreesWithStorageIsAnError) {
  TempDir d;
  {
    h5::File f = h5::create_truncate(d.file("m.h5"));
    h5::write_tensor(f.id(), "x", at::zeros({2}, at::kFloat));
    h5::Handle ds(H5Dopen2(f.id(), "x", H5P_DEFAULT), H5Dclose);
    h5::set_attr(ds.id(), "dtype", std::string("int64"));
  }
  h5::File f = h5::open_read(d.file("m.h5"));
  EXPECT_THROW(h5::read_tensor(f.id(), "x", "m.h5:/x"), h5::Error);
}

TEST(H5io, NestedValueRoundTrip) {
  TempDir d;
  Value v = Value::dict({{"arg0", Value::of(at::ones({2, 3}))},
                         {"pair", Value::tuple({Value::of(at::zeros({1}, at::kLong)), Value::none()})},
                         {"n", Value::of_int(7)},
                         {"x", Value::of_float(0.25)},
                         {"flag", Value::of_bool(true)},
                         {"name", Value::of_str("eager")},
                         {"odd/key", Value::of_int(1)}},
                        "BaseModelOutput");
  {
    h5::File f = h5::create_truncate(d.file("v.h5"));
    h5::write_value(f.id(), "v", v);
  }
  h5::File f = h5::open_read(d.file("v.h5"));
  Value back = h5::read_value(f.id(), "v", "v.h5");
  EXPECT_EQ(back.s, "BaseModelOutput");
  EXPECT_TRUE(at::equal(back.at("arg0").as_tensor(), at::ones({2, 3})));
  EXPECT_EQ(back.at("pair").kind, Value::Kind::Tuple);
  EXPECT_TRUE(back.at("pair").at(1).is_none());
  EXPECT_EQ(back.at("n").as_int(), 7);
  EXPECT_DOUBLE_EQ(back.at("x").as_float(), 0.25);
  EXPECT_TRUE(back.at("flag").b);
  EXPECT_EQ(back.at("name").s, "eager");
  EXPECT_EQ(back.at("odd/key").as_int(), 1);
}

TEST(H5io, WeightsFileRoundTripAndFormatCheck) {
  TempDir d;
  Weights w;
  w.set("model.visual.blocks.0.norm1.weight", at::randn({4}));
  w.set("lm_head.weight", at::randn({3, 4}).to(at::kBFloat16));
  h5::write_weights(d.file("w.h5"), w, {{"config", "{}"}, {"key_layout", "hub"}});
  h5::WeightsFile back = h5::read_weights(d.file("w.h5"));
  EXPECT_EQ(back.config_json, "{}");
  EXPECT_EQ(back.attrs.at("key_layout"), "hub");
  for (const auto& [k, t] : w.flatten()) EXPECT_TRUE(at::equal(back.weights.tensor(k), t)) << k;
  // A recording is not a weights file.
  RecordingWriter rw(d.file("r.h5"), {{"dtype", "float32"}});
  rw.close();
  EXPECT_THROW(h5::read_weights(d.file("r.h5")), h5::Error);
}

TEST(H5io, FailedWeightsWriteLeavesNoFile) {
  TempDir d;
  const std::string out = d.file("partial.h5");
  try {
    h5::WeightsWriter w(out, {{"config", "{}"}});
    w.add("a.b", at::ones({2}));
    w.add("a.b", at::ones({2}));  // written twice: an error before commit()
    w.commit();
    FAIL() << "expected an error";
  } catch (const h5::Error&) {
  }
  EXPECT_FALSE(std::filesystem::exists(out));
  for (const auto& e : std::filesystem::directory_iterator(d.path())) ADD_FAILURE() << "left behind: " << e.path();
}

TEST(Recording, WriterAndReaderAgreeOnTheSchema) {
  TempDir d;
  RecordingWriter w(d.file("r.h5"), {{"dtype", "float32"}, {"producer", "qvl test"}});
  int64_t outer = w.begin("model.visual", "Outer", Value::dict({{"arg0", Value::of(at::ones({2}))}}), "{}");
  int64_t inner = w.begin("model.visual.merger", "Inner", Value::dict({{"x", Value::of(at::zeros({1}))}}),
                          "{\"kind\": \"module\"}");
  w.end(inner, Value::of(at::ones({1})));
  w.end(outer, Value::tuple({Value::of(at::ones({2})), Value::none()}));
  w.close();
  Recording r = Recording::open(d.file("r.h5"));
  ASSERT_EQ(r.calls().size(), 2u);
  EXPECT_EQ(r.calls()[1].parent, 0);
  EXPECT_EQ(r.calls()[1].module_class, "Inner");
  RecordedCall c0 = r.load(0);
  EXPECT_TRUE(c0.output(0).is_tensor());
  EXPECT_TRUE(c0.output(1).is_none());
  RecordedCall c1 = r.load(1);
  EXPECT_TRUE(at::equal(c1.input("x").as_tensor(), at::zeros({1})));
}

TEST(Recording, MissingOrCorruptFileIsAClearError) {
  TempDir d;
  EXPECT_THROW(Recording::open(d.file("nope.h5")), h5::Error);
  testing::write_file(d.file("junk.h5"), std::string(1000, 'x'));
  try {
    Recording::open(d.file("junk.h5"));
    FAIL();
  } catch (const h5::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not an HDF5 file"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qvl
