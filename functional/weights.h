// qvl::Weights — a nested map (tree) of tensors addressed by HF runtime module paths.
//
//   Weights root = ...;                                   // e.g. read from a qvl.weights HDF5 file
//   Weights blk = root.at("model.visual.blocks").at(3);   // cheap view, shares storage
//   at::Tensor w = blk.at("attn").tensor("qkv.weight", {3 * D, D});   // shape-checked leaf
//
// Errors name the full dotted path and list the siblings that do exist (candle's "cannot find
// tensor {path}"), and shape errors name expected and got. A node is either a leaf (one tensor) or
// an inner node (named children); never both.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace qvl {

// Thrown for a missing key, a leaf/inner mix-up or a shape mismatch. what() names the full path.
class WeightsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Weights {
 public:
  Weights();  // an empty root

  // Descend one or more dotted components: at("attn.qkv"), at(3) == at("3").
  Weights at(const std::string& dotted) const;
  Weights at(int64_t index) const { return at(std::to_string(index)); }
  bool has(const std::string& dotted) const;
  // The sub-tree, or an empty node carrying that path when it does not exist (modules without weights,
  // such as the rotary embeddings, still have a path for errors and recordings).
  Weights at_or_empty(const std::string& dotted) const;

  // The tensor at this node (must be a leaf), or at a dotted child path.
  const at::Tensor& tensor() const;
  const at::Tensor& tensor(const std::string& dotted) const;
  // Same, checking the shape; -1 in `expected` matches any size.
  const at::Tensor& tensor(const std::string& dotted, at::IntArrayRef expected) const;
  // nullopt-like: returns an undefined tensor when the child does not exist.
  at::Tensor tensor_or_undefined(const std::string& dotted) const;

  bool is_leaf() const;
  bool empty() const;                    // an inner node with no children
  std::vector<std::string> keys() const;  // children, in natural order ("2" before "10")
  const std::string& path() const { return path_; }  // full dotted path from the root ("" at root)

  // Builder: inserts a leaf at a dotted path below this node, creating inner nodes. Replacing an
  // existing leaf is allowed; turning a leaf into an inner node (or back) is an error.
  void set(const std::string& dotted, at::Tensor t);

  // Every leaf below this node: (dotted path relative to this node, tensor), in natural order.
  std::vector<std::pair<std::string, at::Tensor>> flatten() const;

 private:
  struct Node;
  Weights(std::shared_ptr<Node> node, std::string path);
  std::string child_path(const std::string& key) const;

  std::shared_ptr<Node> node_;
  std::string path_;
};

// Natural ("human") ordering: digit runs compare as numbers, so "blocks.2" < "blocks.10".
bool natural_less(const std::string& a, const std::string& b);
std::vector<std::string> split_dotted(const std::string& dotted);
// "parent.child", or child alone when parent is "" (the root).
std::string join_path(const std::string& parent, const std::string& child);
std::string shape_str(at::IntArrayRef shape);

}  // namespace qvl
