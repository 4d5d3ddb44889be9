#include "instrument/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "functional/value.h"
#include "functional/weights.h"

namespace qvl {
namespace {

std::vector<int64_t> unravel(int64_t flat, at::IntArrayRef shape) {
  std::vector<int64_t> idx(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    idx[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
  return idx;
}

}  // namespace

namespace {
// row_cosines of two float64 [rows, last] tensors whose non-finite elements are already zero.
std::vector<double> row_cosines_finite(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor na = a.pow(2).sum(1), nb = b.pow(2).sum(1), dot = (a * b).sum(1);
  const at::Tensor row_err = at::sub(a, b).pow_(2).sum(1);
  const at::Tensor cos = at::where(na.gt(0).logical_and(nb.gt(0)), dot / (na * nb).sqrt(),
                                   at::where(row_err.eq(0), at::ones_like(dot), at::zeros_like(dot)))
                             .contiguous();
  return std::vector<double>(cos.data_ptr<double>(), cos.data_ptr<double>() + cos.numel());
}
}  // namespace

std::vector<double> row_cosines(const at::Tensor& ours_in, const at::Tensor& ref_in) {
  if (ours_in.numel() != ref_in.numel()) {
    throw std::runtime_error("row_cosines: ours has " + std::to_string(ours_in.numel()) + " elements, ref " +
                             std::to_string(ref_in.numel()));
  }
  const int64_t last = ref_in.dim() > 0 ? ref_in.size(-1) : 1;
  if (last <= 0 || ref_in.numel() == 0) return {};
  auto prep = [&](const at::Tensor& t) {
    at::Tensor d = t.detach().to(at::kCPU).to(at::kDouble).contiguous().view({-1, last});
    return at::where(d.isfinite(), d, at::zeros_like(d));
  };
  return row_cosines_finite(prep(ours_in), prep(ref_in));
}

std::string format_index(const std::vector<int64_t>& idx) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < idx.size(); ++i) os << (i ? "," : "") << idx[i];
  os << "]";
  return os.str();
}

std::string format_worst(const Metrics& m) {
  std::ostringstream os;
  os << "(ours, ref):";
  for (const auto& p : m.worst) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), " %s (%.9g, %.9g)", format_index(p.index).c_str(), p.ours, p.ref);
    os << buf;
  }
  return os.str();
}

Metrics compare(const at::Tensor& ours_in, const at::Tensor& ref_in, bool check_dtype, int n_worst) {
  Metrics m;
  if (!ours_in.defined() || !ref_in.defined()) {
    m.shape_ok = false;
    m.shape_msg = "undefined tensor";
    return m;
  }
  if (ours_in.sizes() != ref_in.sizes()) {
    m.shape_ok = false;
    m.shape_msg = "shape mismatch: ours " + shape_str(ours_in.sizes()) + ", ref " + shape_str(ref_in.sizes());
    return m;
  }
  if (check_dtype && ours_in.scalar_type() != ref_in.scalar_type()) {
    m.shape_ok = false;
    m.shape_msg = "dtype mismatch: ours " + dtype_name(ours_in.scalar_type()) + ", ref " + dtype_name(ref_in.scalar_type());
    return m;
  }
  m.numel = ref_in.numel();
  m.integer = !ref_in.is_floating_point() && !ref_in.is_complex();
  at::Tensor a = ours_in.detach().to(at::kCPU).to(at::kDouble).contiguous().view(-1);
  at::Tensor b = ref_in.detach().to(at::kCPU).to(at::kDouble).contiguous().view(-1);
  if (m.numel == 0) return m;

  // The working set is a few float64 copies of the tensor (a 152064-column lm_head output of 322 tokens is
  // 392 MB per copy), so the temporaries are made in place and dropped as soon as they are used: the values
  // and the order of every reduction are those of the plain formulas.
  at::Tensor diff = at::sub(a, b).abs_();
  // Non-finite values: equal infinities/NaNs in the same places count as agreement.
  {
    const at::Tensor agree_nonfinite =
        a.isnan().logical_and(b.isnan()).logical_or(a.isinf().logical_and(b.isinf()).logical_and(a.eq(b)));
    diff.masked_fill_(agree_nonfinite, 0.0);
  }
  diff.masked_fill_(diff.isnan(), INFINITY);
  const at::Tensor finite = a.isfinite().logical_and(b.isfinite());
  m.mismatches = m.integer ? diff.ne(0).sum().item<int64_t>()
                           : a.isfinite().logical_xor(b.isfinite()).sum().item<int64_t>();

  auto [top_vals, top_idx] = at::topk(diff, std::min<int64_t>(n_worst, m.numel));
  diff = at::Tensor();
  m.max_abs = top_vals[0].item<double>();
  for (int64_t i = 0; i < top_idx.numel(); ++i) {
    const int64_t flat = top_idx[i].item<int64_t>();
    m.worst.push_back({unravel(flat, ref_in.sizes()), a[flat].item<double>(), b[flat].item<double>()});
  }
  m.worst_index = m.worst.front().index;

  // From here on the non-finite elements count as 0. a and b may be the caller's own float64 tensors (to()
  // returns them as they are): replace them, never write into them.
  const at::Tensor not_finite = finite.logical_not();
  at::Tensor af = a.masked_fill(not_finite, 0.0);
  a = at::Tensor();
  at::Tensor bf = b.masked_fill(not_finite, 0.0);
  b = at::Tensor();
  const double ref_scale = bf.abs().max().item<double>();
  m.max_rel = m.max_abs == 0 ? 0.0 : (ref_scale > 0 ? m.max_abs / ref_scale : INFINITY);
  const double sq_err = at::sub(af, bf).pow_(2).sum().item<double>();
  const double sq_ref = bf.pow(2).sum().item<double>();
  const double sq_ours = af.pow(2).sum().item<double>();
  m.rmse = std::sqrt(sq_err / static_cast<double>(m.numel));
  m.nmse = sq_ref > 0 ? sq_err / sq_ref : (sq_err == 0 ? 0.0 : INFINITY);
  m.cosine = (sq_ref > 0 && sq_ours > 0) ? (af * bf).sum().item<double>() / std::sqrt(sq_ref * sq_ours)
                                         : (sq_err == 0 ? 1.0 : 0.0);
  // Per-row cosine over the last dimension (a "row" is one token / patch for activations).
  const int64_t last = ref_in.dim() > 0 ? ref_in.size(-1) : 1;
  if (last > 0) m.row_cos = row_cosines_finite(af.view({-1, last}), bf.view({-1, last}));
  // Pearson: af and bf are not needed after this, so they are centred in place.
  af.sub_(af.mean());
  bf.sub_(bf.mean());
  const double cross = (af * bf).sum().item<double>();
  const double va = af.pow(2).sum().item<double>(), vb = bf.pow(2).sum().item<double>();
  m.pearson = (va > 0 && vb > 0) ? cross / std::sqrt(va * vb) : (sq_err == 0 ? 1.0 : 0.0);
  if (!m.row_cos.empty()) m.min_row_cos = *std::min_element(m.row_cos.begin(), m.row_cos.end());
  return m;
}

}  // namespace qvl
