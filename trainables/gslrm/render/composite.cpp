// Fused CPU tile compositing for the torch backend (trainables/gslrm/render/native.py).
//
// Each tile walks its front-to-back list once, all its pixels side by side, by gsplat 1.5.3
// "classic" rules per pixel:
//   sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,  (dx, dy) = pixel centre - 2D mean
//   alpha = min(0.999, opacity exp(-sigma)); skipped when sigma < 0 or alpha < 1/255
//   the pixel stops before a Gaussian that would bring T (1 - alpha) to <= 1e-4
//   colour += alpha T c, T *= 1 - alpha; output alpha = sum of alpha T = 1 - T
// The pure-PyTorch path materialises [tiles, pixels, entries] tensors and walks them ~40
// times; this touches each (pixel, entry) pair once forward and twice backward (a replay of
// forward, then the reverse sweep), skips an entry no live pixel can reach before its exp,
// and keeps the pixel loops branch-free so that they vectorise.
//
// Layouts (all C-contiguous, scalar_t = float or double):
//   table [M, 9]: per Gaussian (mean x, mean y, conic a, b, c, opacity, r, g, b)
//   ids [E] int64: rows of table, grouped per tile, front to back within a tile
//   tile_ids, starts, counts [T] int64: the non-empty tiles (flat image, row, column index),
//     each tile's offset in ids and list length
//   canvas / grad_canvas [I * tiles_y * tiles_x, P, 4], P = tile_size^2 row-major pixels
//   grad_table [M, 9] (zeroed by the caller; accumulated)
// Work is split over tiles between n_threads threads; backward gives each thread its own
// gradient table and sums them, so results do not depend on scheduling beyond float order.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

// exp(-s) for s in [0, 20] (callers clamp), as plain arithmetic the compiler can vectorise;
// the C library's exp is a call and keeps the pixel loops scalar. Below exp(-20) every
// alpha is far under 1/255, so the clamp never changes what is composited. Range reduction
// s = n ln2 - r, |r| <= ln2 / 2, then a Taylor polynomial: degree 7 in float (truncation
// 5e-9) and 13 in double (4e-18), below each type's rounding, and 2^-n by exponent bits.
inline float exp_neg(float s) {
  const float n = (s * 1.44269504f + 12582912.f) - 12582912.f;  // round: 1.5 * 2^23 trick
  const float r = (n * 0.693145752f - s) + n * 1.42860677e-6f;  // Cody-Waite ln2 split
  float q = 1.f / 5040;
  q = q * r + 1.f / 720;
  q = q * r + 1.f / 120;
  q = q * r + 1.f / 24;
  q = q * r + 1.f / 6;
  q = q * r + 0.5f;
  q = q * r + 1.f;
  q = q * r + 1.f;
  const int32_t bits = (127 - static_cast<int32_t>(n)) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return q * scale;
}

inline double exp_neg(double s) {
  const double n = (s * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;
  const double r = (n * 0.6931471803691238 - s) + n * 1.9082149292705877e-10;
  double q = 1.0 / 6227020800.0;
  q = q * r + 1.0 / 479001600;
  q = q * r + 1.0 / 39916800;
  q = q * r + 1.0 / 3628800;
  q = q * r + 1.0 / 362880;
  q = q * r + 1.0 / 40320;
  q = q * r + 1.0 / 5040;
  q = q * r + 1.0 / 720;
  q = q * r + 1.0 / 120;
  q = q * r + 1.0 / 24;
  q = q * r + 1.0 / 6;
  q = q * r + 0.5;
  q = q * r + 1.0;
  q = q * r + 1.0;
  const int64_t bits = static_cast<int64_t>(1023 - static_cast<int64_t>(n)) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return q * scale;
}

constexpr double kAlphaMin = 1.0 / 255.0;
constexpr double kAlphaMax = 0.999;
constexpr double kTransmittanceMin = 1e-4;

struct Grid {
  int64_t tiles_x, tiles_y, tile_size;
};

constexpr int64_t kMaxPixels = 256;  // tiles up to 16 x 16

// Pixel centres of tile `tile`, row-major: x[p], y[p].
template <typename scalar_t>
void tile_pixels(const Grid& grid, int64_t tile, scalar_t* x, scalar_t* y) {
  const int64_t in_image = tile % (grid.tiles_x * grid.tiles_y);
  const int64_t col = in_image % grid.tiles_x, row = in_image / grid.tiles_x;
  for (int64_t p = 0; p < grid.tile_size * grid.tile_size; ++p) {
    x[p] = static_cast<scalar_t>(col * grid.tile_size + p % grid.tile_size) + scalar_t(0.5);
    y[p] = static_cast<scalar_t>(row * grid.tile_size + p / grid.tile_size) + scalar_t(0.5);
  }
}

// alpha of one list entry at each of a tile's pixels (0 where it is skipped or where the
// pixel stops before it, which also marks the pixel done), as selects rather than branches so
// that the loop vectorises; a live pixel has T > 1e-4, so alpha 0 never stops it.
template <typename scalar_t>
void entry_alphas(const scalar_t* __restrict sigma, const scalar_t* __restrict trans,
                  scalar_t opacity, int64_t pixels, scalar_t* __restrict done,
                  scalar_t* __restrict alpha) {
  for (int64_t p = 0; p < pixels; ++p) {
    const scalar_t s = sigma[p];
    scalar_t clamped = s < 0 ? scalar_t(0) : s;
    clamped = clamped > 20 ? scalar_t(20) : clamped;
    scalar_t a = opacity * exp_neg(clamped);
    a = a < scalar_t(kAlphaMax) ? a : scalar_t(kAlphaMax);
    a = s < 0 ? scalar_t(0) : a;
    a = a < scalar_t(kAlphaMin) ? scalar_t(0) : a;
    a = done[p] != 0 ? scalar_t(0) : a;
    const scalar_t stops = trans[p] * (1 - a) <= scalar_t(kTransmittanceMin);
    done[p] = stops != 0 ? scalar_t(1) : done[p];
    alpha[p] = a * (1 - stops);  // (a select here makes GCC emit a branch)
  }
}

// One tile's walk down its list, entry by entry with all pixels side by side, calling
// visit(k, alpha, trans) for every entry that some pixel composites (alpha[p] = 0 for the
// pixels it does not reach, trans[p] = T before it). Returns the pixels' final T in trans.
//
// The per-pixel rules are gsplat's; the side-by-side order only lets a whole entry be skipped
// without an exp when no live pixel can reach alpha >= 1/255. That test is conservative:
// sigma > log(255 opacity) + 1e-3 means opacity exp(-sigma) < exp(-1e-3) / 255, well clear of
// rounding, and every other entry gets the exact test.
template <typename scalar_t, typename Visit>
void walk_tile(const scalar_t* table, const scalar_t* cuts, const int64_t* list, int64_t count,
               const scalar_t* x, const scalar_t* y, int64_t pixels, scalar_t* trans,
               Visit visit) {
  // 0/1 flags as scalar_t and non-short-circuit & | keep the pixel loops free of branches,
  // so the compiler vectorises them (exp too: exp_neg is plain arithmetic)
  scalar_t done[kMaxPixels], sigma[kMaxPixels], alpha[kMaxPixels];
  int64_t live = pixels;
  for (int64_t p = 0; p < pixels; ++p) {
    trans[p] = 1;
    done[p] = 0;
  }
  for (int64_t k = 0; k < count && live > 0; ++k) {
    const scalar_t* g = table + list[k] * 9;
    const scalar_t cut = cuts[list[k]] + scalar_t(1e-3);
    int reaches = 0;
    for (int64_t p = 0; p < pixels; ++p) {
      const scalar_t dx = x[p] - g[0], dy = y[p] - g[1];
      sigma[p] = scalar_t(0.5) * (g[2] * dx * dx + g[4] * dy * dy) + g[3] * dx * dy;
      reaches |= (done[p] == 0) & (sigma[p] >= 0) & (sigma[p] <= cut);
    }
    if (!reaches) continue;
    const scalar_t opacity = g[5];
    entry_alphas(sigma, trans, opacity, pixels, done, alpha);
    // Reductions in loops of their own: in the loop above they would stop its vectorising
    int added = 0, still = 0;
    for (int64_t p = 0; p < pixels; ++p) {
      added |= alpha[p] != 0;
      still += done[p] == 0;
    }
    live = still;
    if (!added) continue;
    visit(k, alpha, trans);
    for (int64_t p = 0; p < pixels; ++p) trans[p] *= 1 - alpha[p];
  }
}

// One list entry's gradient contributions at each pixel of a tile, walking the list back to
// front: parts[i][p] for the table row's 9 values (mean x, y, conic a, b, c, opacity, r, g,
// b); later[p] is the sum over the entries behind this one of w_j (grad . (c_j, 1)) and is
// updated. alpha[p] = 0 (pixels the entry does not reach) contributes exactly 0, so the
// loop needs no branch and vectorises.
template <typename scalar_t>
void entry_gradients(const scalar_t* __restrict g, const scalar_t* __restrict alpha,
                     const scalar_t* __restrict trans, const scalar_t* __restrict x,
                     const scalar_t* __restrict y, const scalar_t (*__restrict go)[kMaxPixels],
                     int64_t pixels, scalar_t* __restrict later,
                     scalar_t (*__restrict parts)[kMaxPixels]) {
  const scalar_t mx = g[0], my = g[1], ca = g[2], cb = g[3], cc = g[4], inv_op = 1 / g[5];
  const scalar_t r = g[6], gr = g[7], b = g[8];
  for (int64_t p = 0; p < pixels; ++p) {
    const scalar_t a = alpha[p], tr = trans[p], w = a * tr;
    const scalar_t g_w = go[0][p] * r + go[1][p] * gr + go[2][p] * b + go[3][p];
    parts[6][p] = w * go[0][p];
    parts[7][p] = w * go[1][p];
    parts[8][p] = w * go[2][p];
    // Raising alpha scales every later weight down by 1 / (1 - alpha)
    const scalar_t g_alpha = g_w * tr - later[p] / (1 - a);
    later[p] += w * g_w;
    // The 0.999 clamp is treated as constant, as gsplat does
    const scalar_t slope = a < scalar_t(kAlphaMax) ? a : scalar_t(0);  // d alpha / d(-sigma)
    const scalar_t g_sigma = -g_alpha * slope;
    const scalar_t dx = x[p] - mx, dy = y[p] - my;
    parts[0][p] = -g_sigma * (ca * dx + cb * dy);
    parts[1][p] = -g_sigma * (cb * dx + cc * dy);
    parts[2][p] = g_sigma * scalar_t(0.5) * dx * dx;
    parts[3][p] = g_sigma * dx * dy;
    parts[4][p] = g_sigma * scalar_t(0.5) * dy * dy;
    parts[5][p] = g_alpha * slope * inv_op;  // d alpha / d opacity = exp(-sigma)
  }
}

// Sum of v[0..n): pairwise halving when n is a power of two (elementwise adds, which
// vectorise without licence to reorder a float reduction), else left to right.
template <typename scalar_t>
scalar_t pixel_sum(scalar_t* v, int64_t n) {
  if (n & (n - 1)) {
    scalar_t total = 0;
    for (int64_t i = 0; i < n; ++i) total += v[i];
    return total;
  }
  for (int64_t half = n / 2; half > 0; half /= 2)
    for (int64_t i = 0; i < half; ++i) v[i] += v[i + half];
  return v[0];
}

// log(255 opacity) per table row: above it, sigma gives alpha < 1/255.
template <typename scalar_t>
std::vector<scalar_t> alpha_cuts(const scalar_t* table, int64_t n_rows) {
  std::vector<scalar_t> cuts(n_rows);
  for (int64_t i = 0; i < n_rows; ++i) {
    const scalar_t op = table[i * 9 + 5];
    cuts[i] = op > 0 ? std::log(scalar_t(255) * op) : -std::numeric_limits<scalar_t>::infinity();
  }
  return cuts;
}

template <typename Fn>
void over_tiles(int64_t n_tiles, int64_t n_threads, Fn fn) {
  n_threads = std::max<int64_t>(1, std::min(n_threads, n_tiles));
  if (n_threads == 1) {
    fn(0, 0, n_tiles);
    return;
  }
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < n_threads; ++t) {
    const int64_t lo = n_tiles * t / n_threads, hi = n_tiles * (t + 1) / n_threads;
    pool.emplace_back(fn, t, lo, hi);
  }
  for (auto& th : pool) th.join();
}

// kPixels > 0 fixes the pixel count at compile time (tiles of 4, 8 or 16 px), so the pixel
// loops of the inlined helpers have constant trip counts (measured with -march=native:
// backward 60 ms instead of 97 ms on the cpu model's first render); 0 takes it from the grid.
template <typename scalar_t, int64_t kPixels>
void forward(const scalar_t* table, int64_t n_rows, const int64_t* ids, const int64_t* tile_ids,
             const int64_t* starts, const int64_t* counts, int64_t n_tiles, Grid grid,
             scalar_t* canvas, int64_t n_threads) {
  const int64_t pixels = kPixels > 0 ? kPixels : grid.tile_size * grid.tile_size;
  const std::vector<scalar_t> cuts = alpha_cuts(table, n_rows);
  over_tiles(n_tiles, n_threads, [&](int64_t, int64_t lo, int64_t hi) {
    scalar_t x[kMaxPixels], y[kMaxPixels], trans[kMaxPixels];
    for (int64_t t = lo; t < hi; ++t) {
      scalar_t* out = canvas + tile_ids[t] * pixels * 4;
      tile_pixels(grid, tile_ids[t], x, y);
      const int64_t* list = ids + starts[t];
      walk_tile(table, cuts.data(), list, counts[t], x, y, pixels, trans,
                [&](int64_t k, const scalar_t* alpha, const scalar_t* tr) {
                  const scalar_t* g = table + list[k] * 9;
                  for (int64_t p = 0; p < pixels; ++p) {
                    const scalar_t w = alpha[p] * tr[p];
                    out[p * 4 + 0] += w * g[6];
                    out[p * 4 + 1] += w * g[7];
                    out[p * 4 + 2] += w * g[8];
                    out[p * 4 + 3] += w;
                  }
                });
    }
  });
}

template <typename scalar_t, int64_t kPixels>
void backward(const scalar_t* table, int64_t n_rows, const int64_t* ids,
              const int64_t* tile_ids, const int64_t* starts, const int64_t* counts,
              int64_t n_tiles, Grid grid, const scalar_t* grad_canvas, scalar_t* grad_table,
              int64_t n_threads) {
  const int64_t pixels = kPixels > 0 ? kPixels : grid.tile_size * grid.tile_size;
  const std::vector<scalar_t> cuts = alpha_cuts(table, n_rows);
  n_threads = std::max<int64_t>(1, std::min(n_threads, n_tiles));
  // Thread 0 writes into grad_table itself; the others into their own zeroed copies
  std::vector<std::vector<scalar_t>> extra(n_threads - 1,
                                           std::vector<scalar_t>(n_rows * 9, scalar_t(0)));
  over_tiles(n_tiles, n_threads, [&](int64_t thread, int64_t lo, int64_t hi) {
    scalar_t* grad = thread == 0 ? grad_table : extra[thread - 1].data();
    scalar_t x[kMaxPixels], y[kMaxPixels], trans[kMaxPixels], later[kMaxPixels];
    scalar_t go_planes[4][kMaxPixels], parts[9][kMaxPixels];
    // The entries a tile composited, front to back, with each pixel's alpha and T before it:
    // replayed exactly (same operations, same order) rather than divided back out of T
    std::vector<int64_t> used;
    std::vector<scalar_t> alphas, transs;
    for (int64_t t = lo; t < hi; ++t) {
      const scalar_t* go = grad_canvas + tile_ids[t] * pixels * 4;
      const int64_t* list = ids + starts[t];
      tile_pixels(grid, tile_ids[t], x, y);
      used.clear();
      alphas.clear();
      transs.clear();
      walk_tile(table, cuts.data(), list, counts[t], x, y, pixels, trans,
                [&](int64_t k, const scalar_t* alpha, const scalar_t* tr) {
                  used.push_back(k);
                  alphas.insert(alphas.end(), alpha, alpha + pixels);
                  transs.insert(transs.end(), tr, tr + pixels);
                });
      // The tile's output gradient as four planes, for contiguous loads in the sweep
      for (int64_t p = 0; p < pixels; ++p)
        for (int c = 0; c < 4; ++c) go_planes[c][p] = go[p * 4 + c];
      std::fill(later, later + pixels, scalar_t(0));
      for (int64_t m = static_cast<int64_t>(used.size()) - 1; m >= 0; --m) {
        const int64_t row = list[used[m]];
        entry_gradients(table + row * 9, alphas.data() + m * pixels, transs.data() + m * pixels,
                        x, y, go_planes, pixels, later, parts);
        scalar_t* dg = grad + row * 9;
        for (int i = 0; i < 9; ++i) dg[i] += pixel_sum(parts[i], pixels);
      }
    }
  });
  for (const auto& part : extra)
    for (int64_t i = 0; i < n_rows * 9; ++i) grad_table[i] += part[i];
}

// Calls fn with std::integral_constant<int64_t, tile_size^2> for the common tile sizes, else 0.
template <typename Fn>
void dispatch_pixels(int64_t tile_size, Fn fn) {
  switch (tile_size) {
    case 4:
      return fn(std::integral_constant<int64_t, 16>{});
    case 8:
      return fn(std::integral_constant<int64_t, 64>{});
    case 16:
      return fn(std::integral_constant<int64_t, 256>{});
    default:
      return fn(std::integral_constant<int64_t, 0>{});
  }
}

}  // namespace

extern "C" {

int gslrm_composite_abi() { return 3; }

#define GSLRM_EXPORT(suffix, scalar_t)                                                      \
  void gslrm_composite_forward_##suffix(                                                    \
      const scalar_t* table, const int64_t* ids, const int64_t* tile_ids,                   \
      const int64_t* starts, const int64_t* counts, int64_t n_tiles, int64_t tiles_x,       \
      int64_t tiles_y, int64_t tile_size, int64_t n_rows, scalar_t* canvas,                 \
      int64_t n_threads) {                                                                  \
    dispatch_pixels(tile_size, [&](auto pixels) {                                           \
      forward<scalar_t, decltype(pixels)::value>(table, n_rows, ids, tile_ids, starts,      \
                                                 counts, n_tiles,                           \
                                                 Grid{tiles_x, tiles_y, tile_size}, canvas, \
                                                 n_threads);                                \
    });                                                                                     \
  }                                                                                         \
  void gslrm_composite_backward_##suffix(                                                   \
      const scalar_t* table, const int64_t* ids, const int64_t* tile_ids,                   \
      const int64_t* starts, const int64_t* counts, int64_t n_tiles, int64_t tiles_x,       \
      int64_t tiles_y, int64_t tile_size, int64_t n_rows, const scalar_t* grad_canvas,      \
      scalar_t* grad_table, int64_t n_threads) {                                            \
    dispatch_pixels(tile_size, [&](auto pixels) {                                           \
      backward<scalar_t, decltype(pixels)::value>(table, n_rows, ids, tile_ids, starts,     \
                                                  counts, n_tiles,                          \
                                                  Grid{tiles_x, tiles_y, tile_size},        \
                                                  grad_canvas, grad_table, n_threads);      \
    });                                                                                     \
  }

GSLRM_EXPORT(f32, float)
GSLRM_EXPORT(f64, double)

}  // extern "C"
