#include "eval/png.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "util/atomic_file.h"
#include "util/error.h"

namespace lizard {
namespace {

// 5x7 glyphs, one byte per row, bit 4 = leftmost column.
struct Glyph {
  char c;
  uint8_t rows[7];
};
constexpr Glyph kFont[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'A', {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}}, {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
    {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}}, {'D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}},
    {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}}, {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
    {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}}, {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
    {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}}, {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
    {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}}, {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
    {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
    {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}}, {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
    {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}}, {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
    {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}}, {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
    {'Y', {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}}, {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}}, {',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}},
    {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}}, {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
    {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}}, {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}},
    {'/', {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}}, {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}},
    {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}}, {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
    {'_', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F}}, {'#', {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A}},
    {' ', {0, 0, 0, 0, 0, 0, 0}},
};
constexpr uint8_t kUnknown[7] = {0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F};

const uint8_t* glyph(char c) {
  c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const auto& g : kFont)
    if (g.c == c) return g.rows;
  return kUnknown;
}

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
}

void chunk(std::vector<uint8_t>& out, const char* type, const std::vector<uint8_t>& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  // The CRC covers the type and the data.
  const uLong crc = crc32(crc32(0L, Z_NULL, 0), out.data() + start, static_cast<uInt>(out.size() - start));
  put_u32(out, static_cast<uint32_t>(crc));
}

}  // namespace

Raster::Raster(int width, int height, Rgb fill) : w_(width), h_(height) {
  LZ_CHECK(width > 0 && height > 0 && width <= 16384 && height <= 16384, "bad image size {}x{}", width, height);
  px_.resize(size_t(w_) * h_ * 3);
  fill_rect(0, 0, w_, h_, fill);
}

Rgb Raster::at(int x, int y) const {
  const uint8_t* p = &px_[(size_t(y) * w_ + x) * 3];
  return {p[0], p[1], p[2]};
}

void Raster::set(int x, int y, Rgb c) {
  if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
  uint8_t* p = &px_[(size_t(y) * w_ + x) * 3];
  p[0] = c.r;
  p[1] = c.g;
  p[2] = c.b;
}

void Raster::fill_rect(int x, int y, int w, int h, Rgb c) {
  for (int j = std::max(y, 0); j < std::min(y + h, h_); ++j)
    for (int i = std::max(x, 0); i < std::min(x + w, w_); ++i) set(i, j, c);
}

void Raster::text(int x, int y, const std::string& s, Rgb c, int scale) {
  for (size_t k = 0; k < s.size(); ++k) {
    const uint8_t* g = glyph(s[k]);
    const int gx = x + static_cast<int>(k) * 6 * scale;
    for (int row = 0; row < 7; ++row)
      for (int col = 0; col < 5; ++col)
        if (g[row] & (0x10 >> col)) fill_rect(gx + col * scale, y + row * scale, scale, scale, c);
  }
}

std::vector<uint8_t> encode_png(const Raster& r) {
  std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<uint8_t> ihdr;
  put_u32(ihdr, static_cast<uint32_t>(r.width()));
  put_u32(ihdr, static_cast<uint32_t>(r.height()));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8 bits, RGB, deflate, adaptive filters, no interlace
  chunk(out, "IHDR", ihdr);
  // Scanlines, each led by filter type 0 (none).
  const size_t row = size_t(r.width()) * 3;
  std::vector<uint8_t> raw;
  raw.reserve((row + 1) * r.height());
  for (int y = 0; y < r.height(); ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), r.pixels().begin() + y * row, r.pixels().begin() + (y + 1) * row);
  }
  uLongf zlen = compressBound(static_cast<uLong>(raw.size()));
  std::vector<uint8_t> z(zlen);
  LZ_CHECK(compress2(z.data(), &zlen, raw.data(), static_cast<uLong>(raw.size()), 9) == Z_OK, "PNG compression failed");
  z.resize(zlen);
  chunk(out, "IDAT", z);
  chunk(out, "IEND", {});
  return out;
}

void write_png(const std::string& path, const Raster& r) {
  const auto bytes = encode_png(r);
  write_file_atomic(path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

Rgb heat_color(double v) {
  v = std::clamp(v, 0.0, 1.0);
  const Rgb red{215, 48, 39}, yellow{254, 224, 139}, green{26, 152, 80};
  auto lerp = [](Rgb a, Rgb b, double t) {
    auto m = [t](uint8_t x, uint8_t y) { return static_cast<uint8_t>(std::lround(x + (y - x) * t)); };
    return Rgb{m(a.r, b.r), m(a.g, b.g), m(a.b, b.b)};
  };
  return v < 0.5 ? lerp(red, yellow, v * 2) : lerp(yellow, green, (v - 0.5) * 2);
}

Raster heatmap(const std::string& title, const std::string& row_title, const std::vector<std::string>& row_labels,
               const std::string& col_title, const std::vector<std::string>& col_labels,
               const std::vector<std::vector<double>>& values) {
  const int rows = static_cast<int>(row_labels.size()), cols = static_cast<int>(col_labels.size());
  LZ_CHECK(rows > 0 && cols > 0 && static_cast<int>(values.size()) == rows, "heatmap: {} rows of values for {} labels",
           values.size(), rows);
  const int S = 2, cw = 64, ch = 40, pad = 12;  // text scale, cell size
  int label_w = Raster::text_width(row_title, S);
  for (auto& l : row_labels) label_w = std::max(label_w, Raster::text_width(l, S));
  const int x0 = pad + label_w + pad, y0 = pad + 7 * S + pad + 7 * S + pad;  // title, column labels
  const int W = std::max(x0 + cols * cw + pad, pad + Raster::text_width(title, S) + pad);
  const int H = y0 + rows * ch + pad + 7 * S + pad;
  Raster r(W, H);
  const Rgb black{0, 0, 0}, grey{200, 200, 200};
  r.text(pad, pad, title, black, S);
  for (int c = 0; c < cols; ++c)
    r.text(x0 + c * cw + (cw - Raster::text_width(col_labels[c], S)) / 2, y0 - pad / 2 - 7 * S, col_labels[c], black, S);
  r.text(pad, y0 - pad / 2 - 7 * S, row_title, black, S);
  for (int i = 0; i < rows; ++i) {
    LZ_CHECK(static_cast<int>(values[i].size()) == cols, "heatmap: row {} has {} values for {} columns", i,
             values[i].size(), cols);
    r.text(pad, y0 + i * ch + (ch - 7 * S) / 2, row_labels[i], black, S);
    for (int c = 0; c < cols; ++c) {
      const double v = values[i][c];
      const int x = x0 + c * cw, y = y0 + i * ch;
      r.fill_rect(x, y, cw, ch, v < 0 ? grey : heat_color(v));
      r.fill_rect(x, y, cw, 1, black);
      r.fill_rect(x, y, 1, ch, black);
      if (v >= 0) {
        const std::string s = std::to_string(static_cast<int>(std::lround(v * 100)));
        r.text(x + (cw - Raster::text_width(s, S)) / 2, y + (ch - 7 * S) / 2, s, black, S);
      }
    }
  }
  r.fill_rect(x0, y0 + rows * ch, cols * cw + 1, 1, black);
  r.fill_rect(x0 + cols * cw, y0, 1, rows * ch, black);
  r.text(x0 + (cols * cw - Raster::text_width(col_title, S)) / 2, y0 + rows * ch + pad, col_title, black, S);
  return r;
}

}  // namespace lizard
