// Host-side argument checks shared by the CPU and CUDA entry points. The Python wrapper
// (ops/ms_deform_attn.py) raises friendlier ValueErrors first; these TORCH_CHECKs keep
// direct torch.ops calls (opcheck, other callers) from ever reaching a kernel with
// inconsistent shapes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace ddetr_ops {

struct MsdaDims {
  int64_t B, Lv, M, D, Lq, L, P;
};

inline MsdaDims check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                             const at::Tensor& level_start_index,
                             const at::Tensor& sampling_locations,
                             const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (B, Lv, M, D), got shape ",
              value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be (L, 2), got shape ", spatial_shapes.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be (B, Lq, M, L, P, 2), got shape ",
              sampling_locations.sizes());
  const MsdaDims d{value.size(0),
                   value.size(1),
                   value.size(2),
                   value.size(3),
                   sampling_locations.size(1),
                   spatial_shapes.size(0),
                   sampling_locations.size(4)};
  TORCH_CHECK(d.Lv < (int64_t{1} << 31), "ms_deform_attn: Lv = ", d.Lv,
              " tokens is more than the kernels index (2^31 - 1)");
  TORCH_CHECK(d.L >= 1, "ms_deform_attn: spatial_shapes must describe at least one level");
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == d.L,
              "ms_deform_attn: level_start_index must be (L,) = (", d.L, ",), got shape ",
              level_start_index.sizes());
  TORCH_CHECK(sampling_locations.size(0) == d.B && sampling_locations.size(2) == d.M &&
                  sampling_locations.size(3) == d.L,
              "ms_deform_attn: sampling_locations must be (B, Lq, M, L, P, 2) = (", d.B,
              ", Lq, ", d.M, ", ", d.L, ", P, 2), got shape ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5 && attention_weights.size(0) == d.B &&
                  attention_weights.size(1) == d.Lq && attention_weights.size(2) == d.M &&
                  attention_weights.size(3) == d.L && attention_weights.size(4) == d.P,
              "ms_deform_attn: attention_weights must be (B, Lq, M, L, P) = (", d.B, ", ", d.Lq,
              ", ", d.M, ", ", d.L, ", ", d.P, "), got shape ", attention_weights.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64, got ",
              spatial_shapes.scalar_type(), " and ", level_start_index.scalar_type());
  TORCH_CHECK(at::isFloatingType(value.scalar_type()),
              "ms_deform_attn: value must be floating point, got ", value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "ms_deform_attn: value, sampling_locations and attention_weights must share a "
              "dtype, got ",
              value.scalar_type(), ", ", sampling_locations.scalar_type(), ", ",
              attention_weights.scalar_type());
  const auto dev = value.device();
  TORCH_CHECK(spatial_shapes.device() == dev && level_start_index.device() == dev &&
                  sampling_locations.device() == dev && attention_weights.device() == dev,
              "ms_deform_attn: all tensors must be on the device of value (", dev, "), got ",
              spatial_shapes.device(), ", ", level_start_index.device(), ", ",
              sampling_locations.device(), ", ", attention_weights.device());
  return d;
}

inline void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value,
                              const MsdaDims& d) {
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == d.B &&
                  grad_output.size(1) == d.Lq && grad_output.size(2) == d.M * d.D,
              "ms_deform_attn_backward: grad_output must be (B, Lq, M * D) = (", d.B, ", ", d.Lq,
              ", ", d.M * d.D, "), got shape ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.device() == value.device(),
              "ms_deform_attn_backward: grad_output must match value's dtype and device, got ",
              grad_output.scalar_type(), " on ", grad_output.device());
}

// Checks the *values* of the index tensors (CPU tensors only: on the GPU this would need a
// synchronization, and the kernels bound every token index by Lv anyway).
inline void check_level_layout(const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index, int64_t Lv) {
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const int64_t* s = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    const int64_t H = s[2 * l], W = s[2 * l + 1];
    TORCH_CHECK(H >= 1 && W >= 1, "ms_deform_attn: spatial_shapes[", l, "] = (", H, ", ", W,
                ") must be positive");
    TORCH_CHECK(st[l] == total, "ms_deform_attn: level_start_index[", l, "] = ", st[l],
                " but the levels before it hold ", total, " tokens (expected ", total, ")");
    total += H * W;
  }
  TORCH_CHECK(total == Lv, "ms_deform_attn: spatial_shapes describe sum(H * W) = ", total,
              " tokens but value has Lv = ", Lv);
}

}  // namespace ddetr_ops
