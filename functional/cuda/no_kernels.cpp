// Linked instead of rope.cu / rms_norm.cu when CMake's QVL_CUDA is OFF: the fused paths then report that
// the kernels are not built (cuda::unavailable_reason), and a launch that is reached anyway fails saying so.
#include "functional/cuda/kernels.h"

namespace qvl::cuda::detail {

namespace {
const char* kNotBuilt = "qvl was configured with QVL_CUDA=OFF: the CUDA kernels are not built";
}

bool kernels_built() { return false; }
int device_count(std::string* error) {
  if (error) *error = kNotBuilt;
  return -1;
}
std::string rope_launch(const RopeParams&, void*) { return kNotBuilt; }
std::string rms_norm_launch(const RmsParams&, void*) { return kNotBuilt; }

}  // namespace qvl::cuda::detail
