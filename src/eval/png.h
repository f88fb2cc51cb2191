// A small RGB raster, a 5x7 bitmap font and a PNG encoder (IHDR, one zlib IDAT, IEND), enough to
// draw the passkey accuracy heatmap without an image library.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lizard {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb&) const = default;
};

class Raster {
 public:
  Raster(int width, int height, Rgb fill = {255, 255, 255});
  int width() const { return w_; }
  int height() const { return h_; }
  Rgb at(int x, int y) const;
  void set(int x, int y, Rgb c);  // ignores pixels outside
  void fill_rect(int x, int y, int w, int h, Rgb c);
  // Text in the 5x7 font (digits, letters without case, . , : % - + / = ( ) _ # space); each
  // glyph is 6*scale pixels wide. Unknown characters draw as a box.
  void text(int x, int y, const std::string& s, Rgb c, int scale = 1);
  static int text_width(const std::string& s, int scale = 1) { return static_cast<int>(s.size()) * 6 * scale; }
  const std::vector<uint8_t>& pixels() const { return px_; }  // row-major RGB

 private:
  int w_, h_;
  std::vector<uint8_t> px_;
};

// PNG bytes of the raster (8-bit RGB, no interlace).
std::vector<uint8_t> encode_png(const Raster& r);
void write_png(const std::string& path, const Raster& r);  // to a temporary name, then renamed

// Red (0) -> yellow (0.5) -> green (1).
Rgb heat_color(double v);

// A labelled heatmap: rows x cols cells holding values in [0, 1] (negative: no data), each cell
// showing its value as a percentage.
Raster heatmap(const std::string& title, const std::string& row_title, const std::vector<std::string>& row_labels,
               const std::string& col_title, const std::vector<std::string>& col_labels,
               const std::vector<std::vector<double>>& values);

}  // namespace lizard
