#include "vit/train.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "functional/error.h"
#include "instrument/h5io.h"
#include "vit/progress.h"
#include "vit/workers.h"

namespace qvl::vit {
namespace {

// A copy of the tree with every leaf moved (and detached); requires_grad on request.
Weights map_weights(const Weights& w, const at::Device& dev, bool grad) {
  Weights out;
  for (const auto& [path, t] : w.flatten()) {
    at::Tensor m = t.detach().to(dev).contiguous();
    if (m.data_ptr() == t.data_ptr()) m = m.clone();
    if (grad) m.requires_grad_(true);
    out.set(path, m);
  }
  return out;
}

double lr_at(const TrainOptions& o, int64_t step, int64_t total) {
  const int64_t warm = std::max<int64_t>(1, int64_t(std::llround(o.warmup * double(total))));
  if (step < warm) return o.lr / 25.0 + (o.lr - o.lr / 25.0) * double(step) / double(warm);
  const double t = double(step - warm) / double(std::max<int64_t>(1, total - warm));
  return o.lr * 0.5 * (1 + std::cos(M_PI * t)) + o.lr / 1e4 * 0.5 * (1 - std::cos(M_PI * t));
}

// AdamW over one parameter group with ATen's fused kernel (_fused_adamw_, what torch.optim.AdamW(fused=True)
// runs): one call per group and step instead of ~10 small ops per parameter tensor.
struct AdamWGroup {
  std::vector<at::Tensor> params, exp_avg, exp_avg_sq, steps;
  double weight_decay = 0;
  void add(const at::Tensor& p) {
    params.push_back(p);
    exp_avg.push_back(at::zeros_like(p));
    exp_avg_sq.push_back(at::zeros_like(p));
    steps.push_back(at::zeros({}, p.options().dtype(at::kFloat)));
  }
  void step(double lr) {
    if (params.empty()) return;
    c10::NoGradGuard ng;
    std::vector<at::Tensor> grads;
    for (auto& p : params) grads.push_back(p.grad());
    for (auto& s : steps) s.add_(1);  // the caller counts the steps, as torch.optim does
    at::_fused_adamw_(params, grads, exp_avg, exp_avg_sq, {}, steps, lr, 0.9, 0.999, weight_decay, 1e-8,
                      /*amsgrad=*/false, /*maximize=*/false);
  }
};

// The batch split of one loop: how many shares a batch of up to `rows` goes into (batch_threads on the CPU,
// at most one per row; 1 elsewhere), and the workers that run them, each with an equal part of the caller's
// threads. With one share there are no workers and the job runs on the caller.
class BatchSplit {
 public:
  BatchSplit(int64_t batch_threads, int64_t rows, const at::Device& dev)
      : shares_(dev.is_cpu() ? std::max<int64_t>(1, std::min(batch_threads, rows)) : 1) {
    if (shares_ > 1) workers_ = std::make_unique<Workers>(shares_, std::max(1, at::get_num_threads() / int(shares_)));
  }
  int64_t shares() const { return shares_; }
  void run(const std::function<void(int64_t)>& job) {
    if (workers_)
      workers_->run(job);
    else
      job(0);
  }

 private:
  int64_t shares_;
  std::unique_ptr<Workers> workers_;
};

// One share of a training step: its loss weighted by its part of the batch, and that loss's gradients.
struct ShareStep {
  std::vector<at::Tensor> grads;
  at::Tensor loss, correct;  // weighted mean loss; number right
  RopeTimer rope;
  double forward_s = 0;
};

at::Tensor resize_to(const at::Tensor& x, int64_t r) {
  if (x.size(2) == r && x.size(3) == r) return x;
  if (r < x.size(2)) return at::_upsample_bilinear2d_aa(x, {r, r}, /*align_corners=*/false);
  return at::upsample_bilinear2d(x, {r, r}, /*align_corners=*/false);
}

}  // namespace

at::Device parse_device(const std::string& device) {
  if (device == "cpu") return at::Device(at::kCPU);
  if (device == "cuda") {
    if (!at::hasCUDA()) throw std::runtime_error("--device cuda: this LibTorch build sees no usable CUDA device");
    return at::Device(at::kCUDA, 0);
  }
  throw std::runtime_error("--device must be cpu or cuda, got '" + device + "'");
}

at::Tensor normalise(const at::Tensor& u8, const at::Device& device) {
  return u8.to(device).to(at::kFloat).div_(127.5).sub_(1.0);
}

at::Tensor augment(const at::Tensor& u8, int64_t shift, bool flip, at::Generator& gen) {
  const int64_t B = u8.size(0), H = u8.size(2), W = u8.size(3);
  at::Tensor out = u8;
  if (shift > 0) {
    at::Tensor off = at::randint(-shift, shift + 1, {B, 2}, gen, at::TensorOptions().dtype(at::kLong));
    at::Tensor padded = at::constant_pad_nd(u8, {shift, shift, shift, shift}, 0);
    out = at::empty_like(u8);
    auto a = off.accessor<int64_t, 2>();
    for (int64_t i = 0; i < B; ++i)
      out[i].copy_(padded[i].narrow(1, shift + a[i][0], H).narrow(2, shift + a[i][1], W));
  }
  if (flip) {
    at::Tensor f = at::rand({B}, gen) < 0.5;
    out = at::where(f.view({B, 1, 1, 1}), out.flip({3}), out);
  }
  return out;
}

TrainResult train(const VitConfig& c, const Dataset& data, const TrainOptions& o) {
  c.validate();
  const at::Device dev = parse_device(o.device);
  const int64_t rank = o.reducer ? o.reducer->rank : 0, world = o.reducer ? o.reducer->world : 1;
  if (o.batch <= 0 || o.batch % world != 0)
    throw std::runtime_error("vit train: batch " + std::to_string(o.batch) + " must be a positive multiple of the world size " +
                             std::to_string(world));
  if (data.images.size(1) != c.channels || data.images.size(2) != c.image || data.images.size(3) != c.image)
    throw std::runtime_error("vit train: " + data.name + " images are " + shape_str(data.images.sizes()) + ", the model wants [N, " +
                             std::to_string(c.channels) + ", " + std::to_string(c.image) + ", " + std::to_string(c.image) + "]");
  const int64_t N = data.size(), per_epoch = N / o.batch;
  if (per_epoch == 0) throw std::runtime_error("vit train: " + std::to_string(N) + " images is less than one batch of " + std::to_string(o.batch));
  int64_t total = per_epoch * o.epochs;
  if (o.max_steps > 0) total = std::min(total, o.max_steps);
  const int64_t local = o.batch / world;
  if (o.shift_until < 0 || o.shift_until > 1)
    throw std::runtime_error("vit train: shift_until " + std::to_string(o.shift_until) + " must lie in [0, 1]");
  if (o.label_smoothing < 0 || o.label_smoothing >= 1)
    throw std::runtime_error("vit train: label_smoothing " + std::to_string(o.label_smoothing) + " must lie in [0, 1)");
  // steps [0, shift_steps) are shifted
  const int64_t shift_steps = int64_t(std::llround(o.shift_until * double(total)));

  TrainResult r;
  r.weights = map_weights(init(c, o.seed), dev, true);
  std::vector<at::Tensor> decay, no_decay, params;
  for (const auto& [path, t] : r.weights.flatten()) {
    (no_weight_decay(path) ? no_decay : decay).push_back(t);
    params.push_back(t);
  }
  AdamWGroup decay_group, no_decay_group;
  decay_group.weight_decay = o.weight_decay;
  for (auto& t : decay) decay_group.add(t);
  for (auto& t : no_decay) no_decay_group.add(t);

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed * 7919 + 17);
  // Fixed tables (all but mixed) are built once for the training grid.
  RopeTables tables;
  const bool learned_rope = c.rope.kind == VitRope::Kind::Mixed;
  if (c.rope.rotary() && !learned_rope) {
    const double t0 = now_s();
    tables = rope_tables(r.weights, c, c.grid(), c.grid(), Positions::Extend);
    r.rope.build_s += now_s() - t0;
  }
  BatchSplit split(o.batch_threads, local, dev);
  const int64_t shares = split.shares();
  std::vector<ShareStep> parts(static_cast<size_t>(shares));
  Progress bar(o.label, total, o.progress && rank == 0);
  const double t_start = now_s();
  int64_t step = 0;
  for (int64_t ep = 0; ep < o.epochs && step < total; ++ep) {
    at::Tensor perm = at::randperm(N, gen, at::TensorOptions().dtype(at::kLong));
    double correct = 0, seen = 0, loss_sum = 0;
    for (int64_t s = 0; s < per_epoch && step < total; ++s, ++step) {
      at::Tensor idx = perm.slice(0, s * o.batch, (s + 1) * o.batch);
      at::Tensor imgs = augment(data.images.index_select(0, idx), step < shift_steps ? o.shift : 0, o.flip, gen);
      at::Tensor labels = data.labels.index_select(0, idx);
      if (world > 1) {
        imgs = imgs.slice(0, rank * local, (rank + 1) * local);
        labels = labels.slice(0, rank * local, (rank + 1) * local);
      }
      const double lr = lr_at(o, step, total);
      const at::Tensor x = normalise(imgs, dev), y = labels.to(dev);
      split.run([&](int64_t i) {
        const auto [b, e] = share_range(local, shares, i);
        ShareStep& st = parts[size_t(i)];
        st = ShareStep();
        const double tf = now_s();
        at::Tensor lg = forward(r.weights, c, x.slice(0, b, e), Positions::Extend, tables, &st.rope);
        at::Tensor yi = y.slice(0, b, e);
        at::Tensor loss = at::cross_entropy_loss(lg, yi, {}, at::Reduction::Mean, -100, o.label_smoothing);
        if (shares > 1) loss = loss * (double(e - b) / double(local));  // the mean over the whole batch
        st.forward_s = now_s() - tf;
        st.grads = torch::autograd::grad({loss}, params, {}, /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
        st.loss = loss.detach();
        st.correct = (lg.detach().argmax(1) == yi).sum();
      });
      // the shares' sums in a fixed order, whatever order the workers finished in
      at::Tensor loss_t = parts[0].loss, correct_t = parts[0].correct;
      for (size_t k = 0; k < params.size(); ++k) {
        at::Tensor g = parts[0].grads[k].defined() ? parts[0].grads[k] : at::zeros_like(params[k]);
        for (int64_t i = 1; i < shares; ++i)
          if (parts[size_t(i)].grads[k].defined()) g = g + parts[size_t(i)].grads[k];
        params[k].mutable_grad() = g;
      }
      for (int64_t i = 1; i < shares; ++i) {
        loss_t = loss_t + parts[size_t(i)].loss;
        correct_t = correct_t + parts[size_t(i)].correct;
      }
      for (auto& st : parts) {
        r.forward_s += st.forward_s;
        r.rope.build_s += st.rope.build_s;
        r.rope.apply_s += st.rope.apply_s;
      }
      at::Tensor stats = at::stack({loss_t, correct_t.to(at::kFloat) / double(local)}).to(at::kDouble).cpu();
      if (world > 1) {
        std::vector<at::Tensor> grads;
        for (auto& p : params) grads.push_back(p.grad());
        grads.push_back(stats);
        o.reducer->average(grads);
      }
      decay_group.step(lr);
      no_decay_group.step(lr);
      const double l = stats[0].item<double>();
      r.losses.push_back(l);
      loss_sum += l;
      correct += stats[1].item<double>() * o.batch;
      seen += o.batch;
      char m[96];
      std::snprintf(m, sizeof m, "ep %lld/%lld loss %.4f acc %.1f%%", (long long)ep + 1, (long long)o.epochs, loss_sum / (s + 1),
                    100 * correct / seen);
      bar.update(step + 1, (step + 1) * o.batch, m);
    }
    r.final_train_acc = seen > 0 ? correct / seen : 0;
  }
  bar.finish();
  r.train_s = now_s() - t_start;
  r.images_per_s = r.train_s > 0 ? double(step * o.batch) / r.train_s : 0;
  for (auto& p : params) p.requires_grad_(false);
  return r;
}

at::Tensor logits(const Weights& w, const VitConfig& c, const at::Tensor& images_u8, Positions mode) {
  c10::NoGradGuard ng;
  const at::Device dev = w.tensor("head.weight").device();
  return forward(w, c, normalise(images_u8, dev), mode);
}

EvalResult evaluate(const Weights& w, const VitConfig& c, const Dataset& data, int64_t resolution, Positions mode,
                    int64_t batch, const std::string& device, bool progress, const std::string& label, int64_t batch_threads) {
  c10::NoGradGuard ng;
  const at::Device dev = parse_device(device);
  Weights wd = w.tensor("head.weight").device() == dev ? w : map_weights(w, dev, false);
  if (resolution % c.patch != 0)
    throw std::runtime_error("vit eval: resolution " + std::to_string(resolution) + " is not a multiple of the patch " + std::to_string(c.patch));
  const int64_t g = resolution / c.patch, N = data.size();
  RopeTables tables = c.rope.rotary() ? rope_tables(wd, c, g, g, mode) : RopeTables();
  BatchSplit split(batch_threads, batch, dev);
  const int64_t shares = split.shares();
  std::vector<at::Tensor> parts(static_cast<size_t>(shares));
  Progress bar(label, N, progress);
  EvalResult r;
  r.resolution = resolution;
  double correct = 0, loss = 0;
  const double t0 = now_s();
  for (int64_t s = 0; s < N; s += batch) {
    const int64_t e = std::min(N, s + batch);
    at::Tensor x = resize_to(data.images.slice(0, s, e).to(dev).to(at::kFloat), resolution).div_(127.5).sub_(1.0);
    at::Tensor y = data.labels.slice(0, s, e).to(dev);
    split.run([&](int64_t i) {
      c10::NoGradGuard worker_ng;  // grad mode is per thread
      const auto [b0, e0] = share_range(x.size(0), shares, i);
      parts[size_t(i)] = b0 < e0 ? forward(wd, c, x.slice(0, b0, e0), mode, tables) : at::Tensor();
    });
    std::vector<at::Tensor> got;
    for (auto& p : parts)
      if (p.defined()) got.push_back(p);
    at::Tensor lg = got.size() == 1 ? got[0] : at::cat(got);
    loss += at::cross_entropy_loss(lg, y, {}, at::Reduction::Sum).item<double>();
    correct += (lg.argmax(1) == y).sum().item<double>();
    char m[64];
    std::snprintf(m, sizeof m, "%lldpx acc %.2f%%", (long long)resolution, 100 * correct / double(e));
    bar.update(e, e, m);
  }
  bar.finish();
  r.seconds = now_s() - t0;
  r.accuracy = N > 0 ? correct / double(N) : 0;
  r.loss = N > 0 ? loss / double(N) : 0;
  r.images_per_s = r.seconds > 0 ? double(N) / r.seconds : 0;
  return r;
}

void save_model(const std::string& path, const Weights& w, const VitConfig& c, const std::string& source) {
  Weights cpu = map_weights(w, at::Device(at::kCPU), false);
  // read_weights wants a root `config`; it holds the same JSON (model_type qvl_vit), not an HF config
  h5::write_weights(path, cpu, {{"key_layout", "qvl_vit"}, {"vit_config", c.to_json()}, {"config", c.to_json()}, {"source", source}});
}

LoadedModel load_model(const std::string& path) {
  h5::WeightsFile f = h5::read_weights(path);
  auto it = f.attrs.find("vit_config");
  if (it == f.attrs.end())
    throw std::runtime_error("'" + path + "': not a qvl ViT model (no vit_config root attribute; key layout " +
                             (f.attrs.count("key_layout") ? f.attrs.at("key_layout") : std::string("?")) + ")");
  LoadedModel m;
  try {
    m.config = VitConfig::from_json(it->second);
  } catch (const std::exception& e) {
    throw std::runtime_error("'" + path + "': vit_config: " + error_message(e));
  }
  m.weights = f.weights;
  // every parameter the config needs, with its shape
  Weights ref = init(m.config, 0);
  for (const auto& [p, t] : ref.flatten()) m.weights.tensor(p, t.sizes());
  return m;
}

}  // namespace qvl::vit
