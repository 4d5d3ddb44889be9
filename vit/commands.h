// `qvl vit train | eval | sweep`: the command-line side of the ViT experiments.
#pragma once

#include <CLI/CLI.hpp>

namespace qvl::vit {

// Adds the `vit` subcommand (with train, eval and sweep) to `app`; run_vit() runs whichever was parsed.
CLI::App* add_vit_command(CLI::App& app);
int run_vit();

}  // namespace qvl::vit
