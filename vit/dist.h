// Data-parallel training across processes through torch.distributed's c10d: a TCPStore for the
// rendezvous and a process group whose all-reduce averages the gradients (vit/train.h's Reducer).
#pragma once

#include <memory>
#include <string>

#include "vit/train.h"

namespace qvl::vit {

class DistContext {
 public:
  virtual ~DistContext() = default;
  Reducer reducer;
  virtual void barrier() = 0;
};

// world >= 2 processes; rank 0 hosts the TCP store at master "HOST:PORT". Errors say why (no backend built,
// rendezvous timeout, bad address).
std::unique_ptr<DistContext> make_dist(int64_t world, int64_t rank, const std::string& master, const std::string& device);

}  // namespace qvl::vit
