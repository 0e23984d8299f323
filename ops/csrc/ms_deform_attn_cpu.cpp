// CPU kernels for multi-scale deformable attention, and the op schemas (TORCH_LIBRARY).
//
// Layout: value is (B, Lv, M, D), so one (token, head) is a contiguous D-vector. Every loop
// that touches channels runs over such a vector with a compile-time chunk width, which the
// compiler turns into a few SIMD registers of accumulators (the official CPU op was an
// error stub; see DESIGN.md "Facts worth knowing").
//
// Parallelism (at::parallel_for, OpenMP underneath):
//  * forward: over (b, q); each query writes its own output row, so no synchronization.
//  * backward: over (b, m, l). grad_value is a scatter, but a sample of head m on level l
//    only ever writes the rows of head m inside level l, so these tasks own disjoint slices
//    of grad_value (no atomics, no per-thread buffers), and the per-point gradients
//    (grad_loc, grad_attn) are disjoint per (b, m, l) too.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ms_deform_attn_checks.h"
#include "ms_deform_attn_math.h"

namespace ddetr_ops {
namespace {

// Channels per accumulator block: 128 bytes, i.e. two AVX-512 or four AVX2 registers.
template <typename T>
constexpr int64_t kChunk = 128 / sizeof(T);

// out[0:D] = sum_i w[i] * rows[i][0:D]
template <typename T>
inline void weighted_row_sum(const T* const* rows, const T* w, int64_t n, int64_t D, T* out) {
  constexpr int64_t C = kChunk<T>;
  int64_t d0 = 0;
  for (; d0 + C <= D; d0 += C) {
    T acc[C] = {};
    for (int64_t i = 0; i < n; ++i) {
      const T* r = rows[i] + d0;
      const T wi = w[i];
#pragma omp simd
      for (int64_t d = 0; d < C; ++d) acc[d] += wi * r[d];
    }
#pragma omp simd
    for (int64_t d = 0; d < C; ++d) out[d0 + d] = acc[d];
  }
  if (d0 < D) {  // D not a multiple of the chunk
    const int64_t R = D - d0;
    T acc[C] = {};
    for (int64_t i = 0; i < n; ++i) {
      const T* r = rows[i] + d0;
      const T wi = w[i];
      for (int64_t d = 0; d < R; ++d) acc[d] += wi * r[d];
    }
    for (int64_t d = 0; d < R; ++d) out[d0 + d] = acc[d];
  }
}

template <typename T>
void forward_kernel(const T* value, const int64_t* shapes, const int64_t* starts, const T* loc,
                    const T* attn, T* out, const MsdaDims& d) {
  const int64_t LP = d.L * d.P;
  const int64_t MD = d.M * d.D;
  at::parallel_for(0, d.B * d.Lq, 16, [&](int64_t begin, int64_t end) {
    // Gather list of one (query, head): corner row pointers and weights (bilinear * attention).
    std::vector<const T*> rows(LP * 4);
    std::vector<T> weights(LP * 4);
    for (int64_t bq = begin; bq < end; ++bq) {
      const T* vb = value + (bq / d.Lq) * d.Lv * MD;
      for (int64_t m = 0; m < d.M; ++m) {
        const T* lq = loc + (bq * d.M + m) * LP * 2;
        const T* aq = attn + (bq * d.M + m) * LP;
        int64_t n = 0;
        for (int64_t l = 0; l < d.L; ++l) {
          const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
          for (int64_t p = 0; p < d.P; ++p) {
            const int64_t i = l * d.P + p;
            Footprint<T> f;
            if (!bilinear_footprint<T>(lq[2 * i], lq[2 * i + 1], H, W, start, d.Lv, f)) continue;
            const T a = aq[i];
            for (int c = 0; c < 4; ++c) {
              if (f.token[c] < 0) continue;
              rows[n] = vb + f.token[c] * MD + m * d.D;
              __builtin_prefetch(rows[n]);  // the sum below starts only after all points
              weights[n] = f.weight[c] * a;
              ++n;
            }
          }
        }
        weighted_row_sum<T>(rows.data(), weights.data(), n, d.D, out + bq * MD + m * d.D);
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* grad_out, const T* value, const int64_t* shapes,
                     const int64_t* starts, const T* loc, const T* attn, T* grad_value,
                     T* grad_loc, T* grad_attn, const MsdaDims& d) {
  const int64_t MD = d.M * d.D;
  const int64_t D = d.D;
  at::parallel_for(0, d.B * d.M * d.L, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t l = task % d.L;
      const int64_t m = (task / d.L) % d.M;
      const int64_t b = task / (d.L * d.M);
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
      const T* vb = value + b * d.Lv * MD + m * D;
      T* gvb = grad_value + b * d.Lv * MD + m * D;
      for (int64_t q = 0; q < d.Lq; ++q) {
        const T* g = grad_out + ((b * d.Lq + q) * d.M + m) * D;
        const int64_t i0 = (((b * d.Lq + q) * d.M + m) * d.L + l) * d.P;
        for (int64_t i = i0; i < i0 + d.P; ++i) {
          Footprint<T> f;
          if (!bilinear_footprint<T>(loc[2 * i], loc[2 * i + 1], H, W, start, d.Lv, f)) continue;
          const T a = attn[i];
          T gc[4] = {T(0), T(0), T(0), T(0)};
          for (int c = 0; c < 4; ++c) {
            if (f.token[c] < 0) continue;
            const T* v = vb + f.token[c] * MD;
            T* gv = gvb + f.token[c] * MD;
            const T wa = f.weight[c] * a;
            T dot = T(0);
#pragma omp simd reduction(+ : dot)
            for (int64_t k = 0; k < D; ++k) {
              dot += v[k] * g[k];
              gv[k] += wa * g[k];
            }
            gc[c] = dot;
          }
          bilinear_point_grads<T>(f, gc, a, H, W, grad_attn[i], grad_loc[2 * i],
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
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto loc = sampling_locations.to(ct).contiguous();
  const auto attn = attention_weights.to(ct).contiguous();
  auto out = at::empty({d.B, d.Lq, d.M * d.D}, v.options());
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "ms_deform_attn_forward_cpu", [&] {
      forward_kernel<scalar_t>(v.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(),
                               starts.data_ptr<int64_t>(), loc.data_ptr<scalar_t>(),
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
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto loc = sampling_locations.to(ct).contiguous();
  const auto attn = attention_weights.to(ct).contiguous();
  auto grad_value = at::zeros(v.sizes(), v.options());
  auto grad_loc = at::zeros(loc.sizes(), loc.options());
  auto grad_attn = at::zeros(attn.sizes(), attn.options());
  if (attn.numel() > 0 && d.D > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "ms_deform_attn_backward_cpu", [&] {
      backward_kernel<scalar_t>(go.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
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
