#include "functional/weights.h"

#include <algorithm>
#include <sstream>

namespace qvl {

namespace {
struct LazyLeaf {
  std::shared_ptr<const TensorSource> source;
  std::string key;
  std::vector<int64_t> shape;
  at::ScalarType dtype;
};
}  // namespace

struct Weights::Node {
  std::map<std::string, std::shared_ptr<Node>> children;
  at::Tensor leaf;                        // a loaded leaf
  std::shared_ptr<const LazyLeaf> lazy;   // or a lazy one (never both)
  bool unit = false;                      // a stream unit (mark_unit)
  bool lazy_below = false;                // a lazy leaf at or below this node
  bool unit_below = false;                // a stream unit strictly below this node
};

namespace {
at::Tensor load_lazy(const LazyLeaf& l, const std::string& path) {
  at::Tensor t = l.source->load(l.key);
  if (!t.defined() || t.sizes().vec() != l.shape) {
    throw WeightsError("weights: loading '" + path + "' (key '" + l.key + "') gave " +
                       (t.defined() ? shape_str(t.sizes()) : std::string("no tensor")) + ", expected " +
                       shape_str(l.shape));
  }
  return t;
}
}  // namespace

bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i2 = i, j2 = j;
      while (i2 < a.size() && std::isdigit(static_cast<unsigned char>(a[i2]))) ++i2;
      while (j2 < b.size() && std::isdigit(static_cast<unsigned char>(b[j2]))) ++j2;
      std::string na = a.substr(i, i2 - i), nb = b.substr(j, j2 - j);
      na.erase(0, std::min(na.find_first_not_of('0'), na.size()));
      nb.erase(0, std::min(nb.find_first_not_of('0'), nb.size()));
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      i = i2;
      j = j2;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return (a.size() - i) < (b.size() - j);
}

std::vector<std::string> split_dotted(const std::string& dotted) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : dotted) {
    if (c == '.') {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(cur);
  for (const auto& p : parts) {
    if (p.empty()) throw WeightsError("weights: malformed path '" + dotted + "' (empty component)");
  }
  return parts;
}

std::string shape_str(at::IntArrayRef shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

Weights::Weights() : node_(std::make_shared<Node>()) {}
Weights::Weights(std::shared_ptr<Node> node, std::string path) : node_(std::move(node)), path_(std::move(path)) {}

std::string join_path(const std::string& parent, const std::string& child) {
  if (parent.empty()) return child;
  return child.empty() ? parent : parent + "." + child;
}

std::string Weights::child_path(const std::string& key) const { return join_path(path_, key); }

bool Weights::is_leaf() const { return node_->leaf.defined() || node_->lazy != nullptr; }
bool Weights::empty() const { return !is_leaf() && node_->children.empty(); }

std::vector<std::string> Weights::keys() const {
  std::vector<std::string> k;
  for (const auto& [name, _] : node_->children) k.push_back(name);
  std::sort(k.begin(), k.end(), natural_less);
  return k;
}

Weights Weights::at(const std::string& dotted) const {
  Weights cur = *this;
  for (const auto& part : split_dotted(dotted)) {
    if (cur.is_leaf()) {
      throw WeightsError("weights: cannot descend into '" + cur.child_path(part) + "': '" + cur.path_ +
                         "' is a tensor " + shape_str(cur.leaf_shape_here()));
    }
    auto it = cur.node_->children.find(part);
    if (it == cur.node_->children.end()) {
      std::string siblings;
      for (const auto& k : cur.keys()) siblings += (siblings.empty() ? "" : ", ") + k;
      throw WeightsError("weights: cannot find '" + cur.child_path(part) + "' (under '" +
                         (cur.path_.empty() ? std::string("<root>") : cur.path_) + "' there is: " +
                         (siblings.empty() ? std::string("nothing") : siblings) + ")");
    }
    cur = Weights(it->second, cur.child_path(part));
  }
  // A lazy target without stream units below: the caller gets its own loaded copy (one module).
  if (cur.node_->lazy_below && !cur.node_->unit_below) return cur.materialize();
  return cur;
}

Weights Weights::at_or_empty(const std::string& dotted) const {
  if (has(dotted)) return at(dotted);
  return Weights(std::make_shared<Node>(), child_path(dotted));
}

bool Weights::has(const std::string& dotted) const {
  const Node* cur = node_.get();
  for (const auto& part : split_dotted(dotted)) {
    auto it = cur->children.find(part);
    if (it == cur->children.end()) return false;
    cur = it->second.get();
  }
  return true;
}

at::Tensor Weights::tensor() const {
  if (node_->lazy) return load_lazy(*node_->lazy, path_);
  if (!is_leaf()) {
    std::string kids;
    for (const auto& k : keys()) kids += (kids.empty() ? "" : ", ") + k;
    throw WeightsError("weights: '" + (path_.empty() ? std::string("<root>") : path_) +
                       "' is a group, not a tensor (children: " + kids + ")");
  }
  return node_->leaf;
}

at::Tensor Weights::tensor(const std::string& dotted) const {
  return at(dotted).tensor();
}

at::Tensor Weights::tensor(const std::string& dotted, at::IntArrayRef expected) const {
  at::Tensor t = tensor(dotted);
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] < 0 || expected[i] == t.size(i);
  if (!ok) {
    throw WeightsError("weights: shape mismatch for '" + child_path(dotted) + "': expected " +
                       shape_str(expected) + ", got " + shape_str(t.sizes()));
  }
  return t;
}

at::Tensor Weights::tensor_or_undefined(const std::string& dotted) const {
  return has(dotted) ? tensor(dotted) : at::Tensor();
}

void Weights::set(const std::string& dotted, at::Tensor t) {
  if (!t.defined()) throw WeightsError("weights: set('" + child_path(dotted) + "') with an undefined tensor");
  if (is_leaf()) throw WeightsError("weights: cannot insert below tensor '" + path_ + "'");
  Node* cur = node_.get();
  std::string walked = path_;
  auto parts = split_dotted(dotted);
  for (size_t i = 0; i < parts.size(); ++i) {
    walked = join_path(walked, parts[i]);
    auto& child = cur->children[parts[i]];
    if (!child) child = std::make_shared<Node>();
    bool last = i + 1 == parts.size();
    if (last) {
      if (!child->children.empty()) {
        throw WeightsError("weights: cannot store a tensor at '" + walked + "': it is a group");
      }
      child->leaf = std::move(t);
      child->lazy.reset();
      child->lazy_below = false;
    } else if (child->leaf.defined() || child->lazy) {
      throw WeightsError("weights: cannot insert below '" + walked + "': it is a tensor");
    }
    cur = child.get();
  }
}

std::vector<std::pair<std::string, at::Tensor>> Weights::flatten() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (is_leaf()) {
    out.emplace_back("", tensor());
    return out;
  }
  for (const auto& k : keys()) {
    for (auto& [sub, t] : Weights(node_->children.at(k), child_path(k)).flatten()) {
      out.emplace_back(join_path(k, sub), t);
    }
  }
  return out;
}

void Weights::set_lazy(const std::string& dotted, std::shared_ptr<const TensorSource> source, std::string key,
                       std::vector<int64_t> shape, at::ScalarType dtype) {
  if (!source) throw WeightsError("weights: set_lazy('" + child_path(dotted) + "') without a source");
  if (is_leaf()) throw WeightsError("weights: cannot insert below tensor '" + path_ + "'");
  std::vector<Node*> along{node_.get()};
  Node* cur = node_.get();
  std::string walked = path_;
  const auto parts = split_dotted(dotted);
  for (size_t i = 0; i < parts.size(); ++i) {
    walked = join_path(walked, parts[i]);
    auto& child = cur->children[parts[i]];
    if (!child) child = std::make_shared<Node>();
    if (i + 1 == parts.size()) {
      if (!child->children.empty()) throw WeightsError("weights: cannot store a tensor at '" + walked + "': it is a group");
      child->leaf = at::Tensor();
      child->lazy = std::make_shared<LazyLeaf>(LazyLeaf{std::move(source), std::move(key), std::move(shape), dtype});
    } else if (child->leaf.defined() || child->lazy) {
      throw WeightsError("weights: cannot insert below '" + walked + "': it is a tensor");
    }
    cur = child.get();
    along.push_back(cur);
  }
  for (Node* n : along) n->lazy_below = true;
}

void Weights::mark_unit(const std::string& dotted) {
  std::vector<Node*> above{node_.get()};
  Node* cur = node_.get();
  const auto parts = split_dotted(dotted);
  for (size_t i = 0; i < parts.size(); ++i) {
    auto it = cur->children.find(parts[i]);
    if (it == cur->children.end()) throw WeightsError("weights: mark_unit: no node '" + child_path(dotted) + "'");
    cur = it->second.get();
    if (i + 1 < parts.size()) above.push_back(cur);
  }
  if (cur->leaf.defined() || cur->lazy) throw WeightsError("weights: mark_unit: '" + child_path(dotted) + "' is a tensor");
  cur->unit = true;
  for (Node* n : above) n->unit_below = true;
}

bool Weights::is_lazy() const { return node_->lazy_below; }

namespace {
std::shared_ptr<Weights::Node> loaded_copy(const Weights::Node& n, const std::string& path);
}  // namespace

Weights Weights::materialize() const {
  if (!node_->lazy_below) return *this;
  return Weights(loaded_copy(*node_, path_), path_);
}

namespace {
std::shared_ptr<Weights::Node> loaded_copy(const Weights::Node& n, const std::string& path) {
  auto out = std::make_shared<Weights::Node>();
  out->leaf = n.lazy ? load_lazy(*n.lazy, path) : n.leaf;
  for (const auto& [k, c] : n.children) out->children[k] = loaded_copy(*c, join_path(path, k));
  return out;
}
}  // namespace

std::vector<int64_t> Weights::leaf_shape_here() const {
  if (node_->lazy) return node_->lazy->shape;
  return node_->leaf.sizes().vec();
}

std::vector<int64_t> Weights::leaf_shape(const std::string& dotted) const {
  const Node* cur = node_.get();
  for (const auto& part : split_dotted(dotted)) {
    auto it = cur->children.find(part);
    if (it == cur->children.end()) throw WeightsError("weights: cannot find '" + child_path(dotted) + "'");
    cur = it->second.get();
  }
  if (cur->lazy) return cur->lazy->shape;
  if (!cur->leaf.defined()) throw WeightsError("weights: '" + child_path(dotted) + "' is a group, not a tensor");
  return cur->leaf.sizes().vec();
}

Weights cast_floating(const Weights& w, at::ScalarType dtype) {
  Weights out;
  for (const auto& [k, t] : w.flatten()) out.set(k, t.is_floating_point() ? t.to(dtype) : t);
  return out;
}

Weights to_device(const Weights& w, const at::Device& device) {
  Weights out;
  for (const auto& [k, t] : w.flatten()) out.set(k, t.to(device));
  return out;
}

}  // namespace qvl
