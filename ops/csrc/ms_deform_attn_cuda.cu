// CUDA kernels for multi-scale deformable attention (TORCH_LIBRARY_IMPL for CUDA; the schemas
// are defined in ms_deform_attn_cpu.cpp, whose library is loaded first).
//
// Thread layout: a group of G consecutive lanes (G a power of two <= 32, so a group never
// straddles a warp) handles one (b, q, m); lane j handles channels j, j + G, ..., of a chunk
// of CPL * G channels (CPL channels per lane; D > 128 takes several chunks, i.e. groups).
// For the usual D = 32 a warp is one (query, head): its value reads are 128-byte coalesced,
// and the dot products of the backward reduce with warp shuffles.
//
// float16/bfloat16 are read and written as such and accumulated in float32 (at::opmath_type);
// grad_value is accumulated with atomics into a float32 (float64 for double) buffer.
// Only c10's CUDA headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers that
// a minimal toolkit (nvcc + runtime) does not ship.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ms_deform_attn_checks.h"
#include "ms_deform_attn_math.h"

namespace ddetr_ops {
namespace {

constexpr int kThreads = 256;

struct Launch {
  int G;             // lanes per (b, q, m) group
  int cpl;           // channels per lane per chunk: 1, 2 or 4
  int chunks;        // channel chunks, ceil(D / (G * cpl))
  int64_t n_groups;  // B * Lq * M * chunks
  int64_t blocks;
};

Launch launch_config(const MsdaDims& d) {
  Launch c{};
  if (d.D <= 32) {
    c.G = 1;
    while (c.G < d.D) c.G *= 2;
    c.cpl = 1;
  } else {
    c.G = 32;
    c.cpl = d.D <= 64 ? 2 : 4;
  }
  c.chunks = static_cast<int>((d.D + c.G * c.cpl - 1) / (c.G * c.cpl));
  c.n_groups = d.B * d.Lq * d.M * c.chunks;
  c.blocks = (c.n_groups * c.G + kThreads - 1) / kThreads;
  TORCH_CHECK(c.blocks < (int64_t{1} << 31), "ms_deform_attn: B * Lq * M * D too large for one "
              "CUDA launch (", c.blocks, " blocks of ", kThreads, " threads)");
  return c;
}

// (H, W, start) of level l, emptied when it does not fit into Lv (see level_fits).
__device__ __forceinline__ void read_level(const int64_t* shapes, const int64_t* starts, int l,
                                           int64_t Lv, int32_t& H, int32_t& W, int32_t& start) {
  const int64_t h = shapes[2 * l], w = shapes[2 * l + 1], s = starts[l];
  const bool fits = level_fits(h, w, s, Lv);
  H = fits ? static_cast<int32_t>(h) : 0;
  W = fits ? static_cast<int32_t>(w) : 0;
  start = fits ? static_cast<int32_t>(s) : 0;
}

// What a group of G lanes works on: one (batch, query, head) item and a chunk of its D
// channels, lane l taking channels d0, d0 + G, ... (coalesced reads of a value row).
struct GroupWork {
  int64_t item;          // (b * Lq + q) * M + m
  int d0;                // this lane's first channel
  int64_t MD;            // stride of one value token
  int64_t value_offset;  // (b, token 0, head m) in value and grad_value
};

__device__ __forceinline__ GroupWork group_work(int64_t group, int lane, int cpl, int G,
                                                int chunks, int M, int D, int64_t Lq,
                                                int64_t Lv) {
  GroupWork w;
  w.item = group / chunks;
  w.d0 = static_cast<int>(group % chunks) * cpl * G + lane;
  const int m = static_cast<int>(w.item % M);
  const int64_t b = w.item / (static_cast<int64_t>(M) * Lq);
  w.MD = static_cast<int64_t>(M) * D;
  w.value_offset = b * Lv * w.MD + static_cast<int64_t>(m) * D;
  return w;
}

template <typename scalar_t, int CPL>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts, const scalar_t* __restrict__ loc,
                   const scalar_t* __restrict__ attn, scalar_t* __restrict__ out, int64_t Lv,
                   int M, int D, int64_t Lq, int L, int P, int G, int chunks, int64_t n_groups) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t group = t / G;
  if (group >= n_groups) return;  // no shuffles in the forward: idle lanes may leave
  const int lane = static_cast<int>(t % G);
  const GroupWork w = group_work(group, lane, CPL, G, chunks, M, D, Lq, Lv);
  const int64_t item = w.item, MD = w.MD;
  const int d0 = w.d0;
  const scalar_t* vb = value + w.value_offset;
  const scalar_t* lp = loc + item * L * P * 2;
  const scalar_t* ap = attn + item * L * P;
  acc_t acc[CPL];
#pragma unroll
  for (int k = 0; k < CPL; ++k) acc[k] = acc_t(0);
  for (int l = 0; l < L; ++l) {
    int32_t H, W, start;
    read_level(shapes, starts, l, Lv, H, W, start);
    for (int p = 0; p < P; ++p, lp += 2, ++ap) {
      Footprint<acc_t> f;
      bilinear_footprint<acc_t>(static_cast<acc_t>(lp[0]), static_cast<acc_t>(lp[1]), H, W,
                                start, f);
      const acc_t a = static_cast<acc_t>(*ap);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (f.token[c] < 0) continue;
        const scalar_t* row = vb + f.token[c] * MD;
        const acc_t w = f.weight[c] * a;
#pragma unroll
        for (int k = 0; k < CPL; ++k) {
          const int d = d0 + k * G;
          if (d < D) acc[k] += w * static_cast<acc_t>(row[d]);
        }
      }
    }
  }
#pragma unroll
  for (int k = 0; k < CPL; ++k) {
    const int d = d0 + k * G;
    if (d < D) out[item * D + d] = static_cast<scalar_t>(acc[k]);
  }
}

// Sum over the G lanes of a group (all 32 lanes of the warp must call this).
template <typename T>
__device__ __forceinline__ T group_sum(T v, int G) {
  for (int off = G / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename scalar_t, int CPL>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ value,
                    const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                    const scalar_t* __restrict__ loc, const scalar_t* __restrict__ attn,
                    at::opmath_type<scalar_t>* __restrict__ grad_value,
                    at::opmath_type<scalar_t>* __restrict__ grad_loc,
                    at::opmath_type<scalar_t>* __restrict__ grad_attn, int64_t Lv, int M, int D,
                    int64_t Lq, int L, int P, int G, int chunks, int64_t n_groups) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  // Lanes past the last group stay in the loop (reading nothing) for the warp shuffles.
  const bool active = t / G < n_groups;
  const int64_t group = active ? t / G : 0;
  const int lane = static_cast<int>(t % G);
  const GroupWork w = group_work(group, lane, CPL, G, chunks, M, D, Lq, Lv);
  const int64_t item = w.item, MD = w.MD;
  const int d0 = w.d0;
  const scalar_t* vb = value + w.value_offset;
  acc_t* gvb = grad_value + w.value_offset;
  acc_t go[CPL];
#pragma unroll
  for (int k = 0; k < CPL; ++k) {
    const int d = d0 + k * G;
    go[k] = active && d < D ? static_cast<acc_t>(grad_out[item * D + d]) : acc_t(0);
  }
  int64_t i = item * L * P;  // point index into attn (and loc / 2)
  for (int l = 0; l < L; ++l) {
    int32_t H, W, start;
    read_level(shapes, starts, l, Lv, H, W, start);
    for (int p = 0; p < P; ++p, ++i) {
      Footprint<acc_t> f;
      const bool inside = bilinear_footprint<acc_t>(static_cast<acc_t>(loc[2 * i]),
                                                    static_cast<acc_t>(loc[2 * i + 1]), H, W,
                                                    start, f) &&
                          active;
      const acc_t a = static_cast<acc_t>(attn[i]);
      acc_t g[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        g[c] = acc_t(0);
        if (!inside || f.token[c] < 0) continue;
        const scalar_t* row = vb + f.token[c] * MD;
        acc_t* grow = gvb + f.token[c] * MD;
        const acc_t wa = f.weight[c] * a;
#pragma unroll
        for (int k = 0; k < CPL; ++k) {
          const int d = d0 + k * G;
          if (d < D) {
            g[c] += static_cast<acc_t>(row[d]) * go[k];
            atomicAdd(grow + d, wa * go[k]);
          }
        }
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) g[c] = group_sum(g[c], G);
      if (inside && lane == 0) {
        acc_t ga, gx, gy;
        bilinear_point_grads<acc_t, acc_t>(f, g, a, H, W, ga, gx, gy);
        if (chunks == 1) {
          grad_attn[i] = ga;
          grad_loc[2 * i] = gx;
          grad_loc[2 * i + 1] = gy;
        } else {  // other chunks hold the other channels of the same point
          atomicAdd(grad_attn + i, ga);
          atomicAdd(grad_loc + 2 * i, gx);
          atomicAdd(grad_loc + 2 * i + 1, gy);
        }
      }
    }
  }
}

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  const MsdaDims d = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights);
  const c10::cuda::CUDAGuard guard(value.device());
  const auto v = value.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto loc = sampling_locations.contiguous();
  const auto attn = attention_weights.contiguous();
  auto out = at::empty({d.B, d.Lq, d.M * d.D}, v.options());
  const Launch c = launch_config(d);
  if (out.numel() == 0) return out;
  if (attn.numel() == 0) return out.zero_();  // P = 0: nothing sampled
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(),
                                  "ms_deform_attn_forward_cuda", [&] {
    auto kernel = c.cpl == 1 ? forward_kernel<scalar_t, 1>
                : c.cpl == 2 ? forward_kernel<scalar_t, 2>
                             : forward_kernel<scalar_t, 4>;
    kernel<<<c.blocks, kThreads, 0, stream>>>(
        v.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
        loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), d.Lv,
        static_cast<int>(d.M), static_cast<int>(d.D), d.Lq, static_cast<int>(d.L),
        static_cast<int>(d.P), c.G, c.chunks, c.n_groups);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MsdaDims d = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights);
  check_grad_output(grad_output, value, d);
  const c10::cuda::CUDAGuard guard(value.device());
  const auto go = grad_output.contiguous();
  const auto v = value.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto loc = sampling_locations.contiguous();
  const auto attn = attention_weights.contiguous();
  const auto acc = v.options().dtype(at::toOpMathType(v.scalar_type()));
  auto grad_value = at::zeros(v.sizes(), acc);
  auto grad_loc = at::zeros(loc.sizes(), acc);
  auto grad_attn = at::zeros(attn.sizes(), acc);
  const Launch c = launch_config(d);
  if (attn.numel() > 0 && d.D > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(),
                                    "ms_deform_attn_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto kernel = c.cpl == 1 ? backward_kernel<scalar_t, 1>
                  : c.cpl == 2 ? backward_kernel<scalar_t, 2>
                               : backward_kernel<scalar_t, 4>;
      kernel<<<c.blocks, kThreads, 0, stream>>>(
          go.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(),
          starts.data_ptr<int64_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
          grad_value.data_ptr<acc_t>(), grad_loc.data_ptr<acc_t>(), grad_attn.data_ptr<acc_t>(),
          d.Lv, static_cast<int>(d.M), static_cast<int>(d.D), d.Lq, static_cast<int>(d.L),
          static_cast<int>(d.P), c.G, c.chunks, c.n_groups);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const auto dt = value.scalar_type();
  return {grad_value.to(dt), grad_loc.to(dt), grad_attn.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(ddetr_ops, CUDA, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

}  // namespace ddetr_ops
