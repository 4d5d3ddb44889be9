// One RMSNorm of the tiny model's weights through the installed qvl package:
//   consumer WEIGHTS.h5
// loads the weights file, applies the first vision block's norm1 to a fixed input with
// qvl::rms_norm (functional/norm.h), and checks it against the formula written out here. Exit 0 when they agree.
#include <qvl/functional/norm.h>
#include <qvl/instrument/h5io.h>

#include <cmath>
#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer WEIGHTS.h5\n");
    return 2;
  }
  const qvl::Weights weights = qvl::h5::read_weights(argv[1]).weights;
  const qvl::Weights norm = weights.at("model.visual.blocks.0.norm1");
  const at::Tensor w = norm.tensor("weight");
  const at::Tensor x = at::arange(3 * w.size(0), at::kFloat).reshape({3, w.size(0)}).sin();
  const double eps = 1e-6;
  const at::Tensor ours = qvl::rms_norm(norm, x, eps);
  const at::Tensor expected = x * at::rsqrt(x.pow(2).mean(-1, true) + eps) * w;
  const double diff = (ours - expected).abs().max().item<double>();
  std::printf("rms_norm over %lld features of %s: max |ours - formula| = %.3g\n",
              static_cast<long long>(w.size(0)), argv[1], diff);
  return diff <= 1e-6 ? 0 : 1;
}
