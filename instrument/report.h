// The HTML report of `qvl compare --html` and `qvl check --html`: one self-contained file (no network, no
// external script or style; plots are inline SVG drawn here, table sorting is a few lines of inline JS).
// It is fed from the same results the text report prints (CompareReport / CallResult, i.e. judge_outputs'
// TensorChecks, and first_divergent_call), so both name the same first divergent module.
//
// Sections: summary (recordings, dtypes, configs, rule, counts, the first divergent module linked to its row);
// error growth through depth (vision blocks, text layers; log scale; the thresholds drawn); per-token heatmap
// (tokens x text layers, row cosine, image/video token spans marked); per-patch heatmaps over each image grid
// for the vision blocks; for bf16 our error next to HF's own per module; the sortable table of every call.
#pragma once

#include <array>
#include <string>
#include <utility>
#include <vector>

#include "instrument/compare.h"
#include "instrument/recording.h"
#include "instrument/replay.h"

namespace qvl::report {

struct Call {
  CallHeader header;
  std::string verdict;  // "PASS", "FAIL", "ERROR", "no function", "not in ours"
  std::string why;      // the first failing tensor's reason, or the error
  std::vector<TensorCheck> tensors;
  bool judged() const { return verdict == "PASS" || verdict == "FAIL"; }
};

// One vision tower call of the reference: its grids and window order, and the rows of its block calls.
struct VisionPass {
  std::vector<std::array<int64_t, 3>> grids;  // grid_thw rows (t, h, w) in patches
  std::vector<int64_t> window_index;          // merged-group permutation (get_vision_window_index out0)
  std::vector<size_t> block_calls;            // indices into Input::calls, block order
};

struct Input {
  std::string command;                                       // "qvl compare" / "qvl check"
  std::vector<std::pair<std::string, std::string>> summary;  // label, text (escaped on output)
  std::vector<std::pair<std::string, std::string>> configs;  // label, config JSON text
  std::string dtype;                                         // the reference's dtype: the rule applied
  std::vector<Call> calls;                                   // every call, in the reference's order
  int first_divergent = -1;                                  // index into calls, or -1
  // Context from the reference recording (each may be empty: the sections that need it then say so).
  std::vector<std::vector<int64_t>> input_ids;  // [B][T] of the forward pass
  int64_t image_token_id = -1, video_token_id = -1;
  int64_t merge = 2;                            // spatial_merge_size
  std::vector<VisionPass> vision;
};

// From `qvl compare`: the reference recording gives the context (token ids, grids, window order).
Input from_compare(const Recording& ref, const Recording& ours, const CompareReport& rep);
// From `qvl check`: one CallResult per checked call; `first_divergent` indexes `results` (-1 if none).
Input from_check(const Recording& rec, const std::string& weights_path, const std::vector<CallResult>& results,
                 int first_divergent);

std::string render(const Input& in);
// Writes render(in) atomically (a temporary renamed into place; nothing is left on failure).
void write(const std::string& path, const Input& in);

// --- pieces, exposed for tests -------------------------------------------------------------------------
std::string escape(const std::string& s);  // & < > " '
// Where each row of a vision block's hidden states lies in the image grids: rows are in window order
// (merged groups permuted by `window_index`, m*m patches per group), and the un-permuted patches are in
// merge-block order (frame, block row, block col, in-block row, in-block col), images one after another.
struct PatchPos {
  int64_t image = 0, frame = 0, y = 0, x = 0;
};
std::vector<PatchPos> patch_positions(const std::vector<std::array<int64_t, 3>>& grids,
                                      const std::vector<int64_t>& window_index, int64_t merge);
// Spans [begin, end) of consecutive tokens equal to `token` in one row of ids.
std::vector<std::pair<int64_t, int64_t>> token_spans(const std::vector<int64_t>& ids, int64_t token);
// The colour of a cell whose row cosine is `cos`: 1 - cos on a log scale from 1e-12 (pale) to 1 (dark red).
std::string cos_colour(double cos);

}  // namespace qvl::report
