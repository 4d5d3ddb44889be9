// Data parallel over torch.distributed's c10d: TCPStore rendezvous + ProcessGroupGloo, both compiled into the
// torch wheel's libtorch_cpu. The wheel ships no gloo headers; Debian's libgloo-dev (a 2022 snapshot) provides
// them. This file only holds shared_ptrs to gloo types and calls c10d's out-of-line functions (the Options
// constructor, createDeviceForHostname, the ProcessGroupGloo constructor and its virtual allreduce/barrier),
// so the 2022 headers' older gloo::rendezvous::Store (without the store-v2 virtuals) is never instantiated
// here; the two-process tests (tests/unit/test_vit_dist.cpp) check the result against one process.
// NCCL (CUDA) is not built: --device cuda with --world-size > 1 says so.
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <map>
#include <stdexcept>

#include "vit/dist.h"

namespace qvl::vit {
namespace {

class GlooDist : public DistContext {
 public:
  GlooDist(int64_t world, int64_t rank, const std::string& host, uint16_t port) {
    c10d::TCPStoreOptions so;
    so.port = port;
    so.isServer = rank == 0;
    so.numWorkers = int(world);
    so.waitWorkers = true;
    so.timeout = std::chrono::seconds(120);
    store_ = c10::make_intrusive<c10d::TCPStore>(host, so);
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(120));
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
    pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, int(rank), int(world), opts);
    reducer.rank = rank;
    reducer.world = world;
    reducer.average = [this, world](std::vector<at::Tensor>& ts) {
      // one all-reduce per dtype over a flat buffer, then divide by the world size
      std::map<at::ScalarType, std::vector<size_t>> by_type;
      for (size_t i = 0; i < ts.size(); ++i) by_type[ts[i].scalar_type()].push_back(i);
      for (auto& [dt, idx] : by_type) {
        std::vector<at::Tensor> parts;
        for (size_t i : idx) parts.push_back(ts[i].reshape(-1));
        std::vector<at::Tensor> flat = {at::cat(parts)};
        pg_->allreduce(flat)->wait();
        flat[0].div_(double(world));
        int64_t off = 0;
        for (size_t i : idx) {
          const int64_t n = ts[i].numel();
          ts[i].copy_(flat[0].narrow(0, off, n).view_as(ts[i]));
          off += n;
        }
      }
    };
  }
  void barrier() override { pg_->barrier()->wait(); }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

}  // namespace

std::unique_ptr<DistContext> make_dist(int64_t world, int64_t rank, const std::string& master, const std::string& device) {
  if (world < 2) throw std::runtime_error("--world-size must be >= 2 for data parallel, got " + std::to_string(world));
  if (rank < 0 || rank >= world)
    throw std::runtime_error("--rank " + std::to_string(rank) + " is outside 0.." + std::to_string(world - 1));
  if (device != "cpu")
    throw std::runtime_error("--world-size > 1 on " + device + ": only the Gloo backend (CPU) is built; NCCL is not");
  const size_t colon = master.rfind(':');
  if (colon == std::string::npos || colon == 0) throw std::runtime_error("--master must be HOST:PORT, got '" + master + "'");
  int port = 0;
  try {
    port = std::stoi(master.substr(colon + 1));
  } catch (const std::exception&) {
    port = -1;
  }
  if (port <= 0 || port > 65535) throw std::runtime_error("--master '" + master + "': bad port");
  return std::make_unique<GlooDist>(world, rank, master.substr(0, colon), uint16_t(port));
}

}  // namespace qvl::vit
