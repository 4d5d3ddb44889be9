#include "functional/weights.h"

#include <algorithm>
#include <sstream>

namespace qvl {

struct Weights::Node {
  std::map<std::string, std::shared_ptr<Node>> children;
  at::Tensor leaf;  // defined iff this node is a leaf
};

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
  return parent.empty() ? child : parent + "." + child;
}

std::string Weights::child_path(const std::string& key) const { return join_path(path_, key); }

bool Weights::is_leaf() const { return node_->leaf.defined(); }
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
                         "' is a tensor " + shape_str(cur.node_->leaf.sizes()));
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

const at::Tensor& Weights::tensor() const {
  if (!is_leaf()) {
    std::string kids;
    for (const auto& k : keys()) kids += (kids.empty() ? "" : ", ") + k;
    throw WeightsError("weights: '" + (path_.empty() ? std::string("<root>") : path_) +
                       "' is a group, not a tensor (children: " + kids + ")");
  }
  return node_->leaf;
}

const at::Tensor& Weights::tensor(const std::string& dotted) const {
  // The node is owned by the tree, so a reference into it stays valid while the tree lives.
  return at(dotted).tensor();
}

const at::Tensor& Weights::tensor(const std::string& dotted, at::IntArrayRef expected) const {
  const at::Tensor& t = tensor(dotted);
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
    walked = walked.empty() ? parts[i] : walked + "." + parts[i];
    auto& child = cur->children[parts[i]];
    if (!child) child = std::make_shared<Node>();
    bool last = i + 1 == parts.size();
    if (last) {
      if (!child->children.empty()) {
        throw WeightsError("weights: cannot store a tensor at '" + walked + "': it is a group");
      }
      child->leaf = std::move(t);
    } else if (child->leaf.defined()) {
      throw WeightsError("weights: cannot insert below '" + walked + "': it is a tensor");
    }
    cur = child.get();
  }
}

std::vector<std::pair<std::string, at::Tensor>> Weights::flatten() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (is_leaf()) {
    out.emplace_back("", node_->leaf);
    return out;
  }
  for (const auto& k : keys()) {
    for (auto& [sub, t] : Weights(node_->children.at(k), child_path(k)).flatten()) {
      out.emplace_back(sub.empty() ? k : k + "." + sub, t);
    }
  }
  return out;
}

}  // namespace qvl
