// qvl::Weights — a nested map (tree) of tensors addressed by HF runtime module paths.
//
//   Weights root = ...;                                   // e.g. read from a qvl.weights HDF5 file
//   Weights blk = root.at("model.visual.blocks").at(3);   // cheap view, shares storage
//   at::Tensor w = blk.at("attn").tensor("qkv.weight", {3 * D, D});   // shape-checked leaf
//
// Errors name the full dotted path and list the siblings that do exist (candle's "cannot find
// tensor {path}"), and shape errors name expected and got. A node is either a leaf (one tensor) or
// an inner node (named children); never both.
//
// Lazy (streamed) trees. A leaf may be *lazy*: a key of a TensorSource instead of a tensor (set_lazy). Such a
// tree holds no tensor data; it loads on demand, and what it loads is owned by the handle that asked for it,
// never cached in the tree, so memory is bounded by what the caller keeps alive:
//   - tensor() of a lazy leaf loads it (a fresh tensor each time);
//   - at() whose target has no *stream unit* below it returns a materialized copy of the target's sub-tree
//     (every lazy leaf loaded): one module's weights, freed when the caller drops the handle;
//   - at() whose target has stream units below it (the root, "model", "model.language_model.layers") returns
//     the lazy node itself.
// Stream units (mark_unit) are the stacked blocks: each decoder layer and vision block. So the functional
// code, which walks w.at("layers").at(i), loads layer i, runs it and frees it without knowing it is streamed,
// and the replay of one call loads only the weights of the module replayed. flatten() loads every leaf.

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

// Where the tensors of a lazy (streamed) tree come from: a checkpoint's shards, a qvl.weights file
// (converter/convert.h: open_weights_streamed). load() returns a fresh tensor owned by the caller, ready for
// compute (cast as the source was asked); errors name the file and the key. No I/O lives in functional/:
// this is only the interface.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual at::Tensor load(const std::string& key) const = 0;
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

  // The tensor at this node (must be a leaf), or at a dotted child path. Returned by value (a reference-
  // counted handle, no copy of the data): a lazy leaf's tensor is loaded for, and owned by, the caller.
  at::Tensor tensor() const;
  at::Tensor tensor(const std::string& dotted) const;
  // Same, checking the shape; -1 in `expected` matches any size.
  at::Tensor tensor(const std::string& dotted, at::IntArrayRef expected) const;
  // nullopt-like: returns an undefined tensor when the child does not exist.
  at::Tensor tensor_or_undefined(const std::string& dotted) const;

  bool is_leaf() const;
  bool empty() const;                    // an inner node with no children
  std::vector<std::string> keys() const;  // children, in natural order ("2" before "10")
  const std::string& path() const { return path_; }  // full dotted path from the root ("" at root)

  // Builder: inserts a leaf at a dotted path below this node, creating inner nodes. Replacing an
  // existing leaf is allowed; turning a leaf into an inner node (or back) is an error.
  void set(const std::string& dotted, at::Tensor t);

  // Every leaf below this node: (dotted path relative to this node, tensor), in natural order. Lazy leaves
  // are loaded (all of them: a whole lazy model is loaded by this).
  std::vector<std::pair<std::string, at::Tensor>> flatten() const;

  // --- lazy trees (see the top of this file) ---
  // A lazy leaf at a dotted path below this node: `key` of `source`, with its shape and dtype as loaded (for
  // listings and shape errors without loading).
  void set_lazy(const std::string& dotted, std::shared_ptr<const TensorSource> source, std::string key,
                std::vector<int64_t> shape, at::ScalarType dtype);
  // Marks the (existing) inner node at `dotted` as a stream unit.
  void mark_unit(const std::string& dotted);
  bool is_lazy() const;  // this node is a lazy leaf, or has one below it
  // A copy of this sub-tree with every lazy leaf loaded (eager leaves shared, not copied): what at() returns
  // for a target without stream units below it. An eager tree returns itself.
  Weights materialize() const;
  // The shape of the leaf at `dotted`, without loading it.
  std::vector<int64_t> leaf_shape(const std::string& dotted) const;

 public:
  struct Node;  // public only so that the implementation's helpers can name it
 private:
  Weights(std::shared_ptr<Node> node, std::string path);
  std::vector<int64_t> leaf_shape_here() const;
  std::string child_path(const std::string& key) const;

  std::shared_ptr<Node> node_;
  std::string path_;
};

// Natural ("human") ordering: digit runs compare as numbers, so "blocks.2" < "blocks.10".
bool natural_less(const std::string& a, const std::string& b);
std::vector<std::string> split_dotted(const std::string& dotted);
// "parent.child"; an empty side is left out (parent "" is the root, child "" the node itself).
std::string join_path(const std::string& parent, const std::string& child);
std::string shape_str(at::IntArrayRef shape);

// A copy of the tree with every floating tensor cast to `dtype`: what from_pretrained(dtype=...) does to
// a checkpoint, so a bf16 recording is replayed with the same bf16 weights HF used.
Weights cast_floating(const Weights& w, at::ScalarType dtype);

// A copy of the tree with every tensor on `device` (for a replay on a GPU).
Weights to_device(const Weights& w, const at::Device& device);

}  // namespace qvl
