// Bilinear sampling and its gradient for multi-scale deformable attention.
//
// This is the only place the arithmetic lives: the CPU kernel (compiled by the host C++
// compiler) and the CUDA kernels (compiled by nvcc) both call these functions, so the CPU
// tests against the grid_sample reference also check the math the GPU runs.
//
// Conventions (grid_sample with align_corners=False, padding_mode="zeros"): a location
// (lx, ly) in [0, 1] of a level of size (H, W) maps to the continuous pixel coordinate
// x = lx * W - 0.5, y = ly * H - 0.5 (pixel centres at integers); corners outside the map
// read zero. NaN and infinite locations fail every comparison below and contribute zero.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MSDA_HD __host__ __device__ __forceinline__
#define MSDA_FLOOR(v) floor(v)
#else
#include <cmath>
#define MSDA_HD inline
#define MSDA_FLOOR(v) std::floor(v)
#endif

namespace ddetr_ops {

// The four bilinear corners of one sampling point, in the order
// top-left, top-right, bottom-left, bottom-right.
template <typename acc_t>
struct Footprint {
  int32_t token[4];  // row of `value` (index into Lv) of each corner; -1 = outside, reads 0
  acc_t weight[4];   // bilinear weight of each corner (not yet times the attention weight)
  acc_t fx, fy;      // fractional position inside the cell, kept for the gradient
};

// Whether a level's tokens [start, start + H * W) lie inside value's Lv rows. Kernels treat
// a level that does not fit as empty (H = W = 0), so inconsistent spatial_shapes or
// level_start_index can at worst read zeros, never out-of-bounds memory: the CUDA path does
// not synchronize to validate those index tensors.
MSDA_HD bool level_fits(int64_t H, int64_t W, int64_t start, int64_t Lv) {
  // Bound H and W first so that H * W cannot overflow (Lv < 2^31).
  return H >= 0 && W >= 0 && H <= Lv && W <= Lv && start >= 0 && H * W <= Lv &&
         start <= Lv - H * W;
}

// Fills `f` for the location (loc_x, loc_y) on a level of size (H, W) whose first token is
// `start` (a level that passed level_fits), and returns whether the point touches the map.
// A point wholly outside (or NaN/inf) gets four tokens of -1, so it contributes nothing.
// Branch-free, so that GPU threads of a warp do not diverge and the CPU loop stays short.
template <typename acc_t>
MSDA_HD bool bilinear_footprint(acc_t loc_x, acc_t loc_y, int32_t H, int32_t W, int32_t start,
                                Footprint<acc_t>& f) {
  const acc_t x = loc_x * static_cast<acc_t>(W) - static_cast<acc_t>(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(H) - static_cast<acc_t>(0.5);
  // Written positively so that NaN (all comparisons false) counts as outside; `&` rather
  // than `&&` avoids short-circuit branches.
  const bool inside = (x > acc_t(-1)) & (y > acc_t(-1)) & (x < static_cast<acc_t>(W)) &
                      (y < static_cast<acc_t>(H));
  // Outside points move to (-2, -2), which keeps the float-to-int conversion in range.
  const acc_t xc = inside ? x : acc_t(-2);
  const acc_t yc = inside ? y : acc_t(-2);
  const acc_t x0f = MSDA_FLOOR(xc);
  const acc_t y0f = MSDA_FLOOR(yc);
  const int32_t x0 = static_cast<int32_t>(x0f);
  const int32_t y0 = static_cast<int32_t>(y0f);
  f.fx = xc - x0f;
  f.fy = yc - y0f;
  const acc_t gx = acc_t(1) - f.fx;
  const acc_t gy = acc_t(1) - f.fy;
  f.weight[0] = gy * gx;
  f.weight[1] = gy * f.fx;
  f.weight[2] = f.fy * gx;
  f.weight[3] = f.fy * f.fx;
  // For an inside point x0 is in [-1, W - 1], so only these two bounds can fail per axis.
  const bool left = inside & (x0 >= 0), right = inside & (x0 + 1 < W);
  const bool top = y0 >= 0, bottom = y0 + 1 < H;
  const int32_t t = start + y0 * W + x0;
  f.token[0] = (left & top) ? t : -1;
  f.token[1] = (right & top) ? t + 1 : -1;
  f.token[2] = (left & bottom) ? t + W : -1;
  f.token[3] = (right & bottom) ? t + W + 1 : -1;
  return inside;
}

// Gradient of one sampling point's contribution  a * sum_c weight[c] * value[token[c]]
// given g[c] = <value[token[c]], grad_out> (0 for corners off the map):
//   d/da     = sum_c weight[c] * g[c]
//   d/dloc_x = a * W * d(sample)/dx,   d/dloc_y = a * H * d(sample)/dy
// where x = loc_x * W - 0.5 explains the factors W and H. `G` is acc_t, or on the CPU a SIMD
// vector of per-channel partial products, reduced after this linear map (3 reductions
// instead of 4).
template <typename acc_t, typename G>
MSDA_HD void bilinear_point_grads(const Footprint<acc_t>& f, const G g[4], acc_t a, int32_t H,
                                  int32_t W, G& grad_attn, G& grad_x, G& grad_y) {
  const acc_t gx = acc_t(1) - f.fx;
  const acc_t gy = acc_t(1) - f.fy;
  grad_attn = g[0] * f.weight[0] + g[1] * f.weight[1] + g[2] * f.weight[2] + g[3] * f.weight[3];
  grad_x = ((g[1] - g[0]) * gy + (g[3] - g[2]) * f.fy) * (a * static_cast<acc_t>(W));
  grad_y = ((g[2] - g[0]) * gx + (g[3] - g[1]) * f.fx) * (a * static_cast<acc_t>(H));
}

}  // namespace ddetr_ops
