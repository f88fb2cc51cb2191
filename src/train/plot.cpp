#include "train/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace lizard {

namespace {

void line(Raster& r, int x0, int y0, int x1, int y1, Rgb c) {
  const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  for (;;) {
    r.set(x0, y0, c);
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) err += dy, x0 += sx;
    if (e2 <= dx) err += dx, y0 += sy;
  }
}

// One panel: log10(y) against step.
struct Panel {
  int x, y, w, h;
  double xmin, xmax, lmin, lmax;  // lmin/lmax: log10 range
  int px(double s) const { return x + int(std::lround((s - xmin) / std::max(xmax - xmin, 1e-12) * (w - 1))); }
  int py(double v) const {
    const double l = std::log10(std::max(v, 1e-30));
    return y + h - 1 - int(std::lround((l - lmin) / std::max(lmax - lmin, 1e-12) * (h - 1)));
  }
};

Panel make_panel(Raster& r, int x, int y, int w, int h, double xmin, double xmax, double vmin, double vmax,
                 const std::string& title) {
  const Rgb black{0, 0, 0}, grid{225, 225, 225};
  Panel p{x, y, w, h, xmin, xmax, std::floor(std::log10(vmin)), std::ceil(std::log10(vmax))};
  if (p.lmax <= p.lmin) p.lmax = p.lmin + 1;
  for (int d = int(p.lmin); d <= int(p.lmax); ++d) {  // decades
    const int yy = p.py(std::pow(10.0, d));
    for (int xx = x; xx < x + w; ++xx) r.set(xx, yy, grid);
    const std::string lab = fmt::format("1e{}", d);
    r.text(x - Raster::text_width(lab) - 4, yy - 3, lab, black);
  }
  line(r, x, y, x, y + h - 1, black);
  line(r, x, y + h - 1, x + w - 1, y + h - 1, black);
  r.text(x, y - 12, title, black);
  r.text(x, y + h + 4, fmt::format("{}", int64_t(xmin)), black);
  const std::string xm = fmt::format("step {}", int64_t(xmax));
  r.text(x + w - Raster::text_width(xm), y + h + 4, xm, black);
  return p;
}

void curve(Raster& r, const Panel& p, const std::vector<int64_t>& xs, const std::vector<double>& ys, Rgb c) {
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!(ys[i] > 0) || !std::isfinite(ys[i])) continue;
    if (i > 0 && ys[i - 1] > 0 && std::isfinite(ys[i - 1]))
      line(r, p.px(double(xs[i - 1])), p.py(ys[i - 1]), p.px(double(xs[i])), p.py(ys[i]), c);
    else
      r.set(p.px(double(xs[i])), p.py(ys[i]), c);
  }
}

}  // namespace

Raster plot_loss_curves(const LossCurves& c) {
  const int pw = 520, ph = 360, pad = 60;
  Raster r(2 * pw + 3 * pad, ph + 2 * pad + 20);
  const Rgb black{0, 0, 0}, blue{30, 90, 200}, orange{230, 120, 20};
  r.text(pad, 12, c.title, black, 2);
  if (c.steps.empty()) return r;
  double lo = INFINITY, hi = 0;
  auto see = [&](double v) {
    if (v > 0 && std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  };
  for (double v : c.total) see(v);
  for (double v : c.val) see(v);
  double plo = INFINITY, phi = 0;
  for (const auto& row : c.parts)
    for (double v : row)
      if (v > 0 && std::isfinite(v)) plo = std::min(plo, v), phi = std::max(phi, v);
  if (!(hi > 0)) lo = 1e-3, hi = 1;
  if (!(phi > 0)) plo = 1e-3, phi = 1;
  const double x0 = double(c.steps.front()), x1 = double(std::max(c.steps.back(), c.steps.front() + 1));
  Panel a = make_panel(r, pad, pad + 20, pw, ph, x0, x1, lo, hi, "total loss (train blue, held-out orange)");
  curve(r, a, c.steps, c.total, blue);
  for (size_t i = 0; i < c.val.size(); ++i) {
    if (!(c.val[i] > 0)) continue;
    const int px = a.px(double(c.val_steps[i])), py = a.py(c.val[i]);
    r.fill_rect(px - 2, py - 2, 5, 5, orange);
  }
  Panel b = make_panel(r, 2 * pad + pw, pad + 20, pw, ph, x0, x1, plo, phi,
                       "per-layer loss (first blue .. last red)");
  const size_t np = c.parts.empty() ? 0 : c.parts.front().size();
  for (size_t k = 0; k < np; ++k) {
    const double t = np > 1 ? double(k) / double(np - 1) : 0.0;
    const Rgb col{uint8_t(30 + 200 * t), uint8_t(60 + 40 * (1 - std::fabs(2 * t - 1))), uint8_t(220 - 200 * t)};
    std::vector<int64_t> xs;
    std::vector<double> ys;
    for (size_t s = 0; s < c.parts.size() && s < c.steps.size(); ++s)
      if (k < c.parts[s].size()) xs.push_back(c.steps[s]), ys.push_back(c.parts[s][k]);
    curve(r, b, xs, ys, col);
  }
  return r;
}

namespace {

// One axis: value -> pixel offset along [0, len), on a linear or log10 scale.
struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  double t(double v) const { return log ? std::log10(v) : v; }
  bool ok(double v) const { return std::isfinite(v) && (!log || v > 0); }
  double frac(double v) const { return (t(v) - t(lo)) / std::max(t(hi) - t(lo), 1e-12); }
};

Axis fit_axis(const std::vector<double>& vs, bool log, bool from_zero) {
  Axis a;
  a.log = log;
  double lo = INFINITY, hi = -INFINITY;
  for (double v : vs)
    if (a.ok(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!(lo <= hi)) lo = log ? 1 : 0, hi = log ? 10 : 1;
  if (!log && from_zero) lo = std::min(lo, 0.0);
  if (log) {
    lo = std::pow(10.0, std::floor(std::log10(lo))), hi = std::pow(10.0, std::ceil(std::log10(hi)));
    if (hi <= lo) hi = lo * 10;
  } else {
    const double span = hi > lo ? hi - lo : std::max(std::fabs(hi), 1.0);
    if (!from_zero || lo < 0) lo -= 0.05 * span;
    hi += 0.1 * span;
  }
  a.lo = lo, a.hi = hi;
  return a;
}

std::string tick_label(double v) {
  const double a = std::fabs(v);
  if (a != 0 && (a >= 1e6 || a < 1e-2)) return fmt::format("{:.0e}", v);
  if (a >= 100 || v == std::round(v)) return fmt::format("{:.0f}", v);
  return fmt::format("{:.2g}", v);
}

void draw_line_panel(Raster& r, const LinePanel& p, int x, int y, int w, int h) {
  const Rgb black{0, 0, 0}, grid{225, 225, 225};
  std::vector<double> xs, ys;
  for (const auto& s : p.series) xs.insert(xs.end(), s.x.begin(), s.x.end()), ys.insert(ys.end(), s.y.begin(), s.y.end());
  xs.insert(xs.end(), p.x_ticks.begin(), p.x_ticks.end());
  Axis ax = fit_axis(xs, p.log_x, false), ay = fit_axis(ys, p.log_y, p.y_from_zero);
  if (p.log_x && !xs.empty()) {  // no padding to whole decades along x: the data's own range
    double lo = INFINITY, hi = -INFINITY;
    for (double v : xs)
      if (ax.ok(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    if (lo < hi) ax.lo = lo / 1.25, ax.hi = hi * 1.25;
    else if (lo == hi) ax.lo = lo / 2, ax.hi = hi * 2;  // one point: centred
  }
  auto px = [&](double v) { return x + int(std::lround(ax.frac(v) * (w - 1))); };
  auto py = [&](double v) { return y + h - 1 - int(std::lround(ay.frac(v) * (h - 1))); };
  // y grid and labels: decades on a log axis, 5 steps on a linear one
  std::vector<double> yt;
  if (ay.log)
    for (double d = std::log10(ay.lo); d <= std::log10(ay.hi) + 1e-9; d += 1) yt.push_back(std::pow(10.0, d));
  else
    for (int i = 0; i <= 5; ++i) yt.push_back(ay.lo + (ay.hi - ay.lo) * i / 5);
  for (double v : yt) {
    const int yy = py(v);
    for (int xx = x; xx < x + w; ++xx) r.set(xx, yy, grid);
    const std::string lab = tick_label(v);
    r.text(x - Raster::text_width(lab) - 4, yy - 3, lab, black);
  }
  // x ticks
  std::vector<double> xt = p.x_ticks;
  std::vector<std::string> xl = p.x_tick_labels;
  if (xt.empty()) xt = {ax.lo, ax.hi};
  for (size_t i = 0; i < xt.size(); ++i) {
    if (!ax.ok(xt[i])) continue;
    const int xx = px(xt[i]);
    for (int yy = y; yy < y + h; ++yy) r.set(xx, yy, grid);
    line(r, xx, y + h - 1, xx, y + h + 2, black);
    const std::string lab = i < xl.size() ? xl[i] : tick_label(xt[i]);
    r.text(xx - Raster::text_width(lab) / 2, y + h + 5, lab, black);
  }
  line(r, x, y, x, y + h - 1, black);
  line(r, x, y + h - 1, x + w - 1, y + h - 1, black);
  r.text(x, y - 30, p.title, black);
  r.text(x - 4, y - 16, p.y_label + (p.log_y ? " (log)" : ""), black);
  const std::string xlab = p.x_label + (p.log_x ? " (log)" : "");
  r.text(x + (w - Raster::text_width(xlab)) / 2, y + h + 18, xlab, black);
  // the series, then the legend in the top-right corner
  int ly = y + 6;
  for (const auto& s : p.series) {
    bool prev = false;
    int qx = 0, qy = 0;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!ax.ok(s.x[i]) || !ay.ok(s.y[i])) {
        prev = false;
        continue;
      }
      const int cx = px(s.x[i]), cy = py(s.y[i]);
      if (prev) {
        line(r, qx, qy, cx, cy, s.color);
        line(r, qx, qy + 1, cx, cy + 1, s.color);
      }
      r.fill_rect(cx - 2, cy - 2, 5, 5, s.color);
      prev = true, qx = cx, qy = cy;
    }
    const int lx = x + w - Raster::text_width(s.name) - 30;
    r.fill_rect(lx, ly + 2, 16, 3, s.color);
    r.text(lx + 22, ly, s.name, black);
    ly += 12;
  }
}

}  // namespace

Raster plot_line_panels(const std::string& title, const std::vector<LinePanel>& panels) {
  const int pw = 460, ph = 320, left = 80, gap = 100, top = 80, bottom = 60;
  const int n = std::max<int>(1, static_cast<int>(panels.size()));
  Raster r(left + n * pw + (n - 1) * gap + 40, top + ph + bottom);
  r.text(left, 12, title, Rgb{0, 0, 0}, 2);
  for (int i = 0; i < static_cast<int>(panels.size()); ++i) draw_line_panel(r, panels[i], left + i * (pw + gap), top, pw, ph);
  return r;
}

}  // namespace lizard
