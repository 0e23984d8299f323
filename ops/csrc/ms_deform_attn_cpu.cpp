// CPU kernels for multi-scale deformable attention, and the op schemas (TORCH_LIBRARY).
//
// Layout: value is (B, Lv, M, D), so one (token, head) is a contiguous D-vector. Channel
// loops run over such vectors in 64-byte SIMD blocks (GCC/Clang vector extensions: one
// AVX-512 register, two AVX2 ones), with the accumulators held in registers.
//
// Parallelism (at::parallel_for, OpenMP underneath):
//  * forward: over queries; each (query, head) writes its own output row. The corner list
//    of the next (query, head) is built -- and its rows prefetched -- before the current
//    one is summed, which hides most of the gather latency for scattered points.
//  * backward: over (b, m, l). grad_value is a scatter, but a sample of head m on level l
//    only ever writes the rows of head m inside level l, so these tasks own disjoint slices
//    of grad_value (no atomics, no per-thread copies), and the per-point gradients
//    (grad_loc, grad_attn) are disjoint per (b, m, l) too.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ms_deform_attn_checks.h"
#include "ms_deform_attn_math.h"

namespace ddetr_ops {
namespace {

// 64 bytes of T as one SIMD value; loads and stores are unaligned.
template <typename T>
struct Simd {
  typedef T type __attribute__((vector_size(64)));
  static constexpr int64_t size = 64 / sizeof(T);
  static type load(const T* p) {
    type v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(T* p, type v) { __builtin_memcpy(p, &v, sizeof(v)); }
  static T sum(type v) {
    T s = T(0);
    for (int64_t k = 0; k < size; ++k) s += v[k];
    return s;
  }
};

// out[0:D] = sum_i w[i] * rows[i][0:D]
template <typename T>
void weighted_row_sum(const T* const* rows, const T* w, int64_t n, int64_t D, T* out) {
  using S = Simd<T>;
  using V = typename S::type;
  constexpr int64_t K = S::size;
  int64_t d0 = 0;
  for (; d0 + 2 * K <= D; d0 += 2 * K) {  // two blocks: 32 float channels per pass
    V a0 = {}, a1 = {};
    for (int64_t i = 0; i < n; ++i) {
      const T* r = rows[i] + d0;
      a0 += S::load(r) * w[i];
      a1 += S::load(r + K) * w[i];
    }
    S::store(out + d0, a0);
    S::store(out + d0 + K, a1);
  }
  for (; d0 + K <= D; d0 += K) {
    V a0 = {};
    for (int64_t i = 0; i < n; ++i) a0 += S::load(rows[i] + d0) * w[i];
    S::store(out + d0, a0);
  }
  for (; d0 < D; ++d0) {  // D not a multiple of the block
    T a = T(0);
    for (int64_t i = 0; i < n; ++i) a += rows[i][d0] * w[i];
    out[d0] = a;
  }
}

// g += <v, go> over D channels, and gv += wa * go.
template <typename T>
T dot_and_axpy(const T* v, const T* go, T wa, T* gv, int64_t D) {
  using S = Simd<T>;
  using V = typename S::type;
  constexpr int64_t K = S::size;
  V acc = {};
  int64_t k = 0;
  for (; k + K <= D; k += K) {
    const V g = S::load(go + k);
    acc += S::load(v + k) * g;
    S::store(gv + k, S::load(gv + k) + g * wa);
  }
  T dot = S::sum(acc);
  for (; k < D; ++k) {
    dot += v[k] * go[k];
    gv[k] += wa * go[k];
  }
  return dot;
}

// (H, W, start) of each level as int32, with levels that do not fit into Lv emptied.
struct Levels {
  std::vector<int32_t> H, W, start;
  Levels(const int64_t* shapes, const int64_t* starts, int64_t L, int64_t Lv)
      : H(L), W(L), start(L) {
    for (int64_t l = 0; l < L; ++l) {
      const bool fits = level_fits(shapes[2 * l], shapes[2 * l + 1], starts[l], Lv);
      H[l] = fits ? static_cast<int32_t>(shapes[2 * l]) : 0;
      W[l] = fits ? static_cast<int32_t>(shapes[2 * l + 1]) : 0;
      start[l] = fits ? static_cast<int32_t>(starts[l]) : 0;
    }
  }
};

// The gather list of one (query, head): 4 * L * P corner rows and their weights
// (bilinear * attention). Corners off the map point at a row of zeros: no branches in the
// sum, and like grid_sample an off-map corner reads exactly 0 (even if value holds inf/NaN).
template <typename T>
struct GatherList {
  std::vector<const T*> rows;
  std::vector<T> weights;
  explicit GatherList(int64_t LP) : rows(4 * LP), weights(4 * LP) {}

  void build(const T* loc, const T* attn, const Levels& lv, int64_t P, const T* value_head,
             int64_t MD, const T* zero_row) {
    const int64_t L = static_cast<int64_t>(lv.H.size());
    const T** r = rows.data();
    T* w = weights.data();
    for (int64_t l = 0; l < L; ++l) {
      const int32_t H = lv.H[l], W = lv.W[l], start = lv.start[l];
      for (int64_t p = 0; p < P; ++p, loc += 2, ++attn, r += 4, w += 4) {
        Footprint<T> f;
        bilinear_footprint<T>(loc[0], loc[1], H, W, start, f);
        const T a = *attn;
        for (int c = 0; c < 4; ++c) {
          const T* row = f.token[c] >= 0 ? value_head + f.token[c] * MD : zero_row;
          r[c] = row;
          w[c] = f.weight[c] * a;
          // Fetched while the previous (query, head) is summed.
          __builtin_prefetch(row);
          __builtin_prefetch(row + 64 / sizeof(T));
        }
      }
    }
  }
};

template <typename T>
void forward_kernel(const T* value, const Levels& lv, const T* loc, const T* attn, T* out,
                    const MsdaDims& d) {
  const int64_t LP = d.L * d.P;
  const int64_t MD = d.M * d.D;
  at::parallel_for(0, d.B * d.Lq, 16, [&](int64_t begin, int64_t end) {
    const std::vector<T> zero_row(d.D, T(0));
    GatherList<T> cur(LP), next(LP);
    // Items are (b, q, m) in memory order: loc/attn/out advance by one head per item.
    auto build = [&](GatherList<T>& g, int64_t item) {
      const int64_t b = item / (d.Lq * d.M), m = item % d.M;
      g.build(loc + item * LP * 2, attn + item * LP, lv, d.P, value + b * d.Lv * MD + m * d.D,
              MD, zero_row.data());
    };
    const int64_t first = begin * d.M, last = end * d.M;
    build(next, first);
    for (int64_t item = first; item < last; ++item) {
      std::swap(cur, next);
      if (item + 1 < last) build(next, item + 1);
      weighted_row_sum<T>(cur.rows.data(), cur.weights.data(), 4 * LP, d.D, out + item * d.D);
    }
  });
}

template <typename T>
void backward_kernel(const T* grad_out, const T* value, const Levels& lv, const T* loc,
                     const T* attn, T* grad_value, T* grad_loc, T* grad_attn,
                     const MsdaDims& d) {
  const int64_t MD = d.M * d.D;
  at::parallel_for(0, d.B * d.M * d.L, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t l = task % d.L;
      const int64_t m = (task / d.L) % d.M;
      const int64_t b = task / (d.L * d.M);
      const int32_t H = lv.H[l], W = lv.W[l], start = lv.start[l];
      const T* vb = value + b * d.Lv * MD + m * d.D;
      T* gvb = grad_value + b * d.Lv * MD + m * d.D;
      for (int64_t q = 0; q < d.Lq; ++q) {
        const T* go = grad_out + ((b * d.Lq + q) * d.M + m) * d.D;
        const int64_t i0 = (((b * d.Lq + q) * d.M + m) * d.L + l) * d.P;
        for (int64_t i = i0; i < i0 + d.P; ++i) {
          Footprint<T> f;
          if (!bilinear_footprint<T>(loc[2 * i], loc[2 * i + 1], H, W, start, f)) continue;
          const T a = attn[i];
          T g[4] = {T(0), T(0), T(0), T(0)};
          for (int c = 0; c < 4; ++c) {
            if (f.token[c] < 0) continue;
            const int64_t off = f.token[c] * MD;
            g[c] = dot_and_axpy<T>(vb + off, go, f.weight[c] * a, gvb + off, d.D);
          }
          bilinear_point_grads<T>(f, g, a, H, W, grad_attn[i], grad_loc[2 * i],
                                  grad_loc[2 * i + 1]);
        }
      }
    }
  });
}

// float16/bfloat16 are computed in float32: the accumulation precision the issue asks for,
// and the CPU has no faster half-precision arithmetic to lose.
at::ScalarType compute_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  const MsdaDims d = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights);
  check_level_layout(spatial_shapes, level_start_index, d.Lv);
  const auto ct = compute_dtype(value.scalar_type());
  const auto v = value.to(ct).contiguous();
  const auto loc = sampling_locations.to(ct).contiguous();
  const auto attn = attention_weights.to(ct).contiguous();
  const Levels lv(spatial_shapes.contiguous().data_ptr<int64_t>(),
                  level_start_index.contiguous().data_ptr<int64_t>(), d.L, d.Lv);
  auto out = at::empty({d.B, d.Lq, d.M * d.D}, v.options());
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "ms_deform_attn_forward_cpu", [&] {
      forward_kernel<scalar_t>(v.data_ptr<scalar_t>(), lv, loc.data_ptr<scalar_t>(),
                               attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), d);
    });
  }
  return out.to(value.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MsdaDims d = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights);
  check_grad_output(grad_output, value, d);
  check_level_layout(spatial_shapes, level_start_index, d.Lv);
  const auto ct = compute_dtype(value.scalar_type());
  const auto go = grad_output.to(ct).contiguous();
  const auto v = value.to(ct).contiguous();
  const auto loc = sampling_locations.to(ct).contiguous();
  const auto attn = attention_weights.to(ct).contiguous();
  const Levels lv(spatial_shapes.contiguous().data_ptr<int64_t>(),
                  level_start_index.contiguous().data_ptr<int64_t>(), d.L, d.Lv);
  auto grad_value = at::zeros(v.sizes(), v.options());
  auto grad_loc = at::zeros(loc.sizes(), loc.options());
  auto grad_attn = at::zeros(attn.sizes(), attn.options());
  if (attn.numel() > 0 && d.D > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "ms_deform_attn_backward_cpu", [&] {
      backward_kernel<scalar_t>(go.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), lv,
                                loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                                grad_value.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(),
                                grad_attn.data_ptr<scalar_t>(), d);
    });
  }
  const auto dt = value.scalar_type();
  return {grad_value.to(dt), grad_loc.to(dt), grad_attn.to(dt)};
}

}  // namespace

TORCH_LIBRARY(ddetr_ops, m) {
  // Fake (meta) kernels and autograd are registered from Python in this module; torch
  // imports it on demand if the library is loaded some other way.
  m.set_python_module("ops.ms_deform_attn");
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ddetr_ops, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace ddetr_ops
