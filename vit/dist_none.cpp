// Stand-in when no c10d backend is built (see vit/dist.h and CMakeLists.txt).
#include <stdexcept>

#include "vit/dist.h"

namespace qvl::vit {

std::unique_ptr<DistContext> make_dist(int64_t, int64_t, const std::string&, const std::string&) {
  throw std::runtime_error("--world-size > 1: this build has no torch.distributed backend (see the README, ViT experiments)");
}

}  // namespace qvl::vit
