// Training and evaluation of the functional ViT (functional/vit.h) on LibTorch autograd.
//
// Protocol: AdamW (betas 0.9/0.999, eps 1e-8, ATen's fused kernel; weight decay on matrices only), one-cycle learning rate (linear warm-up
// from lr/25 over the first `warmup` fraction of the steps, then cosine to ~0), cross-entropy, pixels
// scaled to [-1, 1], optional label smoothing. Augmentation (per image, drawn from the run's seed): a random
// shift of up to `shift` pixels (zero padding, i.e. background) over the first `shift_until` of the steps, and
// a horizontal flip with probability 1/2.
// Determinism: the shuffle and the augmentation come from a CPU generator seeded with `seed`, the
// initialisation from init(cfg, seed); with one thread two runs give the same losses bit for bit.
// Batch split: TrainOptions::batch_threads workers each take a contiguous share of the batch (same idea as
// the ranks below, inside one process).
// Data parallel: with a `Reducer`, every rank draws the same global batch and augmentation, trains on its
// contiguous share of it, and the gradients are averaged by the reducer before each step: the same
// update as one process with the combined batch (float rounding aside).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "functional/vit.h"
#include "vit/data.h"

namespace qvl::vit {

// Averages tensors (gradients, then a [2] loss/correct tensor) in place across the ranks.
struct Reducer {
  int64_t rank = 0, world = 1;
  std::function<void(std::vector<at::Tensor>&)> average;
};

struct TrainOptions {
  int64_t epochs = 3;
  int64_t batch = 64;             // global batch (split over the ranks)
  int64_t max_steps = 0;          // > 0: stop after this many steps (the schedule still spans them)
  double lr = 4e-3;
  double weight_decay = 0.05;
  double warmup = 0.1;            // fraction of the steps
  int64_t shift = 2;              // random shift in pixels (0: none)
  double shift_until = 0.5;       // fraction of the steps that get the shift (the rest train on clean images)
  double label_smoothing = 0.0;   // cross-entropy label smoothing
  bool flip = true;
  uint64_t seed = 0;
  std::string device = "cpu";     // "cpu" or "cuda"
  bool progress = true;           // progress bar on stderr
  std::string label = "train";    // progress bar label
  const Reducer* reducer = nullptr;
  // CPU: split each (rank's) batch over this many worker threads (vit/workers.h), each with
  // max(1, at::get_num_threads() / batch_threads) intra-op threads; their gradients are summed in a fixed
  // order. 1: the whole batch on the calling thread. Deterministic for a given value; different values
  // change the float rounding of the gradient sum (and so the run), not the update it approximates.
  int64_t batch_threads = 1;
};

struct TrainResult {
  Weights weights;                // trained, on the training device
  std::vector<double> losses;     // per step (the global batch's mean loss)
  double train_s = 0;             // training-loop wall time
  double images_per_s = 0;        // global images per second
  double final_train_acc = 0;     // running accuracy over the last epoch
  RopeTimer rope;                 // forward-pass RoPE build/apply time, summed over the run
  double forward_s = 0;           // forward-pass time (for the RoPE share)
};

// Pixels [N, C, H, W] uint8 -> float in [-1, 1] on `device`.
at::Tensor normalise(const at::Tensor& u8, const at::Device& device);

// The shift/flip augmentation of one global batch (uint8 in, uint8 out), drawn from `gen`.
at::Tensor augment(const at::Tensor& u8, int64_t shift, bool flip, at::Generator& gen);

TrainResult train(const VitConfig& c, const Dataset& data, const TrainOptions& o);

struct EvalResult {
  double accuracy = 0, loss = 0, images_per_s = 0, seconds = 0;
  int64_t resolution = 0;
};
// Resizes the test images to `resolution` (bilinear, antialiased when shrinking) and evaluates; on the CPU
// each batch is split over `batch_threads` worker threads as in training.
EvalResult evaluate(const Weights& w, const VitConfig& c, const Dataset& data, int64_t resolution, Positions mode,
                    int64_t batch = 500, const std::string& device = "cpu", bool progress = false,
                    const std::string& label = "eval", int64_t batch_threads = 1);
// Logits for a batch of images at their own size (for save/load checks).
at::Tensor logits(const Weights& w, const VitConfig& c, const at::Tensor& images_u8, Positions mode = Positions::Extend);

// qvl.weights HDF5 (format qvl.weights, key_layout qvl_vit, the config JSON in the root attribute
// vit_config, and the same JSON in `config`, which read_weights requires); written to a temporary and renamed.
void save_model(const std::string& path, const Weights& w, const VitConfig& c, const std::string& source);
struct LoadedModel {
  Weights weights;
  VitConfig config;
};
LoadedModel load_model(const std::string& path);

at::Device parse_device(const std::string& device);  // "cpu" | "cuda" (error when no GPU is usable)

}  // namespace qvl::vit
