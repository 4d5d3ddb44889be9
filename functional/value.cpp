#include "functional/value.h"

#include <stdexcept>

#include "functional/weights.h"

namespace qvl {

const char* kind_name(Value::Kind k) {
  switch (k) {
    case Value::Kind::None: return "None";
    case Value::Kind::Tensor: return "tensor";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::Str: return "str";
    case Value::Kind::Tuple: return "tuple";
    case Value::Kind::List: return "list";
    case Value::Kind::Dict: return "dict";
    case Value::Kind::Object: return "object";
  }
  return "?";
}

namespace {
const std::vector<std::pair<at::ScalarType, const char*>>& dtype_names() {
  static const std::vector<std::pair<at::ScalarType, const char*>> table = {
      {at::kDouble, "float64"}, {at::kFloat, "float32"}, {at::kHalf, "float16"}, {at::kBFloat16, "bfloat16"},
      {at::kLong, "int64"},     {at::kInt, "int32"},     {at::kShort, "int16"},  {at::kChar, "int8"},
      {at::kByte, "uint8"},     {at::kBool, "bool"},     {at::kFloat8_e4m3fn, "float8_e4m3fn"},
      {at::kFloat8_e5m2, "float8_e5m2"},
  };
  return table;
}
}  // namespace

std::string dtype_name(at::ScalarType t) {
  for (const auto& [dt, name] : dtype_names())
    if (dt == t) return name;
  return std::string("unsupported(") + c10::toString(t) + ")";
}

std::optional<at::ScalarType> dtype_from_name(const std::string& name) {
  for (const auto& [dt, n] : dtype_names())
    if (name == n) return dt;
  return std::nullopt;
}

const std::vector<at::ScalarType>& named_dtypes() {
  static const std::vector<at::ScalarType> all = [] {
    std::vector<at::ScalarType> out;
    for (const auto& [dt, n] : dtype_names()) out.push_back(dt);
    return out;
  }();
  return all;
}

Value Value::of(at::Tensor t) {
  Value v;
  v.kind = Kind::Tensor;
  v.tensor = std::move(t);
  return v;
}
Value Value::of_bool(bool x) {
  Value v;
  v.kind = Kind::Bool;
  v.b = x;
  return v;
}
Value Value::of_int(int64_t x) {
  Value v;
  v.kind = Kind::Int;
  v.i = x;
  return v;
}
Value Value::of_float(double x) {
  Value v;
  v.kind = Kind::Float;
  v.f = x;
  return v;
}
Value Value::of_str(std::string x) {
  Value v;
  v.kind = Kind::Str;
  v.s = std::move(x);
  return v;
}
Value Value::tuple(std::vector<Value> xs) {
  Value v;
  v.kind = Kind::Tuple;
  v.items = std::move(xs);
  return v;
}
Value Value::dict(std::vector<std::pair<std::string, Value>> kv, std::string type_name) {
  Value v;
  v.kind = Kind::Dict;
  v.s = std::move(type_name);
  for (auto& [k, x] : kv) {
    v.keys.push_back(k);
    v.items.push_back(std::move(x));
  }
  return v;
}

bool Value::has(const std::string& key) const {
  if (kind != Kind::Dict) return false;
  for (const auto& k : keys)
    if (k == key) return true;
  return false;
}

const Value& Value::at(const std::string& key) const {
  TORCH_CHECK(kind == Kind::Dict, "value: cannot look up key '", key, "' in a ", kind_name(kind));
  for (size_t j = 0; j < keys.size(); ++j)
    if (keys[j] == key) return items[j];
  std::string all;
  for (const auto& k : keys) all += (all.empty() ? "" : ", ") + k;
  TORCH_CHECK(false, "value: no key '", key, "' (keys: ", all.empty() ? "none" : all, ")");
}

const Value& Value::at(size_t index) const {
  TORCH_CHECK(kind == Kind::Tuple || kind == Kind::List || kind == Kind::Dict, "value: cannot index a ",
              kind_name(kind));
  TORCH_CHECK(index < items.size(), "value: index ", index, " out of range for ", kind_name(kind), " of size ",
              items.size());
  return items[index];
}

const at::Tensor& Value::as_tensor(const std::string& what) const {
  TORCH_CHECK(kind == Kind::Tensor, what, ": expected a tensor, got ", describe());
  return tensor;
}

int64_t Value::as_int(const std::string& what) const {
  if (kind == Kind::Int) return i;
  if (kind == Kind::Tensor && tensor.numel() == 1 && !tensor.is_floating_point()) return tensor.item<int64_t>();
  TORCH_CHECK(false, what, ": expected an int, got ", describe());
}

double Value::as_float(const std::string& what) const {
  if (kind == Kind::Float) return f;
  if (kind == Kind::Int) return static_cast<double>(i);
  if (kind == Kind::Tensor && tensor.numel() == 1) return tensor.item<double>();
  TORCH_CHECK(false, what, ": expected a float, got ", describe());
}

std::vector<std::pair<std::string, at::Tensor>> Value::tensors(const std::string& prefix) const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (kind == Kind::Tensor) {
    out.emplace_back(prefix, tensor);
    return out;
  }
  for (size_t j = 0; j < items.size(); ++j) {
    std::string name = kind == Kind::Dict ? keys[j] : std::to_string(j);
    std::string p = join_path(prefix, name);
    for (auto& x : items[j].tensors(p)) out.push_back(std::move(x));
  }
  return out;
}

std::string Value::describe() const {
  switch (kind) {
    case Kind::Tensor:
      return tensor.defined() ? "tensor " + dtype_name(tensor.scalar_type()) + " " + shape_str(tensor.sizes())
                              : "undefined tensor";
    case Kind::Bool: return b ? "bool True" : "bool False";
    case Kind::Int: return "int " + std::to_string(i);
    case Kind::Float: return "float " + std::to_string(f);
    case Kind::Str: return "str '" + s + "'";
    case Kind::Tuple:
    case Kind::List:
    case Kind::Dict: return std::string(kind_name(kind)) + "(" + std::to_string(items.size()) + ")";
    case Kind::Object: return "object " + s;
    case Kind::None: return "None";
  }
  return "?";
}

}  // namespace qvl
