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

// General line charts: panels side by side, each with labelled axes, optional log10 x and/or y,
// one coloured line (with dots at the points) per series and a legend. Non-finite or (on a log
// axis) non-positive points are left out, breaking the line.
struct Series {
  std::string name;
  Rgb color;
  std::vector<double> x, y;
};
struct LinePanel {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  bool y_from_zero = false;             // linear y: start the axis at 0
  std::vector<double> x_ticks;          // empty: the ends of the data
  std::vector<std::string> x_tick_labels;
  std::vector<Series> series;
};
Raster plot_line_panels(const std::string& title, const std::vector<LinePanel>& panels);

}  // namespace lizard
