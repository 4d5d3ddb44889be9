// qvl::Value — a nested value as a module call sees it: a tensor, None, a Python scalar or string, or a
// tuple / list / dict of values. It is the in-memory form of a recorded call's inputs and outputs
// (docs/design.md §3) and what the Recorder interface takes; it does no I/O.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace qvl {

struct Value {
  enum class Kind { None, Tensor, Bool, Int, Float, Str, Tuple, List, Dict, Object };

  Kind kind = Kind::None;
  at::Tensor tensor;                // Tensor
  bool b = false;                   // Bool
  int64_t i = 0;                    // Int
  double f = 0.0;                   // Float
  std::string s;                    // Str: the string; Dict/Object: the Python type name (may be empty)
  std::vector<Value> items;         // Tuple, List, Dict (values, in order)
  std::vector<std::string> keys;    // Dict (keys, parallel to items)

  static Value none() { return Value(); }
  static Value of(at::Tensor t);
  static Value of_bool(bool v);
  static Value of_int(int64_t v);
  static Value of_float(double v);
  static Value of_str(std::string v);
  static Value tuple(std::vector<Value> v);
  static Value dict(std::vector<std::pair<std::string, Value>> kv, std::string type_name = "");

  bool is_none() const { return kind == Kind::None; }
  bool is_tensor() const { return kind == Kind::Tensor; }
  bool has(const std::string& key) const;                 // Dict
  const Value& at(const std::string& key) const;          // Dict; error lists the keys
  const Value& at(size_t index) const;                    // Tuple/List/Dict by position
  size_t size() const { return items.size(); }
  // The tensor, or an error naming `what` and the actual kind.
  const at::Tensor& as_tensor(const std::string& what = "value") const;
  int64_t as_int(const std::string& what = "value") const;  // Int, or a 0-d integer tensor
  double as_float(const std::string& what = "value") const;

  // Every tensor leaf with a path like "out0", "out.last_hidden_state", "arg3.1".
  std::vector<std::pair<std::string, at::Tensor>> tensors(const std::string& prefix = "") const;
  std::string describe() const;  // short: "tensor float32 [48, 64]", "tuple(2)", "None", "int 3"
};

const char* kind_name(Value::Kind k);
// torch's dtype names ("float32", "bfloat16", "int64", ...), the one table of them: the `dtype` attribute of
// qvl's HDF5 datasets, recording attributes and the safetensors writer all use it.
std::string dtype_name(at::ScalarType t);
std::optional<at::ScalarType> dtype_from_name(const std::string& name);  // inverse of dtype_name; none if unknown
const std::vector<at::ScalarType>& named_dtypes();                        // every dtype with a name, in order

}  // namespace qvl
