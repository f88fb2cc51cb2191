// The loss curves of a training run as a PNG (drawn on eval/png.h's raster and encoder): the total
// training loss with the held-out loss, and one curve per loss component (layer), log scale.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/png.h"

namespace lizard {

struct LossCurves {
  std::string title;
  std::vector<int64_t> steps;                 // x of the training points
  std::vector<double> total;                  // training loss per step
  std::vector<std::vector<double>> parts;     // parts[step][component]
  std::vector<std::string> part_names;
  std::vector<int64_t> val_steps;
  std::vector<double> val;                    // held-out loss
};

Raster plot_loss_curves(const LossCurves& c);

}  // namespace lizard
