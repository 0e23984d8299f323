// CPU kernels for multi-scale deformable attention, and the op schemas (TORCH_LIBRARY).
//
// Layout: value is (B, Lv, M, D), so one (token, head) is a contiguous D-vector. Channel
// loops run over such vectors in 64-byte SIMD blocks (GCC/Clang vector extensions: one
// AVX-512 register, two AVX2 ones), with the accumulators held in registers.
//
// Two code paths: float32 with D in {16, 32, 64} (Deformable DETR: D = 32) runs the AVX-512
// kernels of ms_deform_attn_cpu_avx512.h when the CPU has AVX-512 (checked at run time) and
// DDETR_OPS_CPU_PATH is not "portable"; everything else runs the portable kernels below.
// torch.ops.ddetr_ops.cpu_path() says which path float32 calls take.
//
// Parallelism (at::parallel_for, OpenMP underneath):
//  * forward: over queries; each (query, head) writes its own output row. The corner list
//    of the next (query, head) is built -- and its rows prefetched -- before the current
//    one is summed, which hides most of the gather latency for scattered points.
//  * backward: one task per (b, head[, level range]), handed to threads in order as they
//    become free. grad_value is a scatter, but a sample of head m on level l only ever
//    writes the rows of head m inside level l, so these tasks own disjoint slices of
//    grad_value (no atomics, no per-thread copies), and the per-point gradients (grad_loc,
//    grad_attn) are disjoint too. A task copies its head's rows into a dense per-thread
//    buffer and scatters into another (DenseSlice, below, says why), then copies the
//    gradient out. The same pipelining as the forward; for D a multiple of the SIMD width up
//    to 4 blocks (D = 32 in float: 2 blocks) the channel loops are unrolled at compile time.
//    The results do not depend on the thread count: each task's arithmetic is sequential.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>
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
};

// Sum of the lanes of a Bytes-wide vector by halving (a log-depth tree, not a serial chain).
template <typename T, int Bytes>
struct LaneSum {
  typedef T V __attribute__((vector_size(Bytes)));
  typedef T Half __attribute__((vector_size(Bytes / 2)));
  static T sum(V v) {
    Half lo, hi;
    __builtin_memcpy(&lo, &v, Bytes / 2);
    __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + Bytes / 2, Bytes / 2);
    return LaneSum<T, Bytes / 2>::sum(lo + hi);
  }
};
template <typename T>
struct LaneSum<T, 2 * sizeof(T)> {
  typedef T V __attribute__((vector_size(2 * sizeof(T))));
  static T sum(V v) { return v[0] + v[1]; }
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

// One corner of the backward: acc += v * go lane-wise (the dot product, reduced later) and
// gr += wa * go, over D channels in SIMD blocks; returns the dot product of the channels
// past the last full block. __restrict__ and D by value let the compiler keep everything in
// registers (through a captured reference it reloaded D after every store).
template <typename T>
inline T corner_backward(const T* __restrict__ v, const T* __restrict__ go, T* __restrict__ gr,
                         T wa, int64_t D, typename Simd<T>::type& acc) {
  using S = Simd<T>;
  constexpr int64_t K = S::size;
  int64_t ch = 0;
  for (; ch + K <= D; ch += K) {
    const auto g = S::load(go + ch);
    acc += S::load(v + ch) * g;
    S::store(gr + ch, S::load(gr + ch) + g * wa);
  }
  T tail = T(0);
  for (; ch < D; ++ch) {
    tail += v[ch] * go[ch];
    gr[ch] += wa * go[ch];
  }
  return tail;
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

// The backward's tasks: (batch element b, group of heads, range of levels). A sample of head m
// on level l only ever writes the grad_value rows of head m inside level l, so tasks own
// disjoint slices of grad_value (no atomics, no per-thread copies), and the per-point
// gradients (grad_loc, grad_attn) are disjoint too. A task zeroes its own grad_value slice
// before it scatters into it (the rows land in cache where they are about to be used, instead
// of a separate pass over the whole tensor), and writes every grad_loc / grad_attn entry of
// its (items, levels), so none of the three outputs needs zero-filling first.
struct BackwardTasks {
  struct Task {
    int64_t b, m_begin, Mg;        // batch element, heads [m_begin, m_begin + Mg)
    int64_t l_begin, l_end;        // levels [l_begin, l_end)
    int64_t token_begin, token_end;  // their rows of value: [token_begin, token_end)
  };
  int64_t groups, splits, count;
  std::vector<int64_t> split_level;  // level ranges: [split_level[s], split_level[s + 1])
  std::vector<int64_t> split_token;  // first token of each level range, then Lv

  BackwardTasks(const MsdaDims& d, const Levels& lv, int64_t threads) {
    groups = d.M;
    // One head per task: its slice of value and grad_value is smallest (at the encoder shape
    // 2 x 2.8 MB, so the two threads' slices stay in cache). Levels are split only when there
    // are fewer (batch element, head) pairs than threads: every level range walks all items
    // again (measured: splitting the encoder shape's levels into two ranges, to fit the small
    // levels' rows into L2, cost a quarter more time).
    split_level = {0};
    const int64_t n = std::min(d.L, (threads + d.B * groups - 1) / (d.B * groups));
    for (int64_t s = 1; s < n; ++s) split_level.push_back(s * d.L / n);
    split_level.push_back(d.L);
    splits = static_cast<int64_t>(split_level.size()) - 1;
    count = d.B * groups * splits;
    // The levels tile [0, Lv) in order (check_level_layout), so a range of levels owns a
    // contiguous range of tokens; the last range also takes any rows past the last level.
    split_token.assign(splits + 1, d.Lv);
    for (int64_t s = 1; s < splits; ++s) {
      int64_t token = 0;
      for (int64_t l = 0; l < split_level[s]; ++l) token += int64_t(lv.H[l]) * lv.W[l];
      split_token[s] = token;
    }
    split_token[0] = 0;
  }
  Task operator()(int64_t task, const MsdaDims& d) const {
    const int64_t s = task % splits;
    const int64_t g = (task / splits) % groups;
    const int64_t b = task / (splits * groups);
    const int64_t m_begin = g * d.M / groups;
    return {b, m_begin, (g + 1) * d.M / groups - m_begin, split_level[s], split_level[s + 1],
            split_token[s], split_token[s + 1]};
  }
};

// A task's slice of value and of grad_value, in dense per-thread buffers of layout
// (Lv, Mg, D): copied in before the task, its gradient zeroed there, scattered into and copied
// out after. In value's own layout the rows of one head lie 1 KB apart (M * D floats), so a
// task touches a page per 4 tokens (TLB misses for scattered points), and all its rows share
// only 4 of the 64 cache-line offsets in a page, so loads of rows keep matching the low
// address bits of recent stores into other rows, which CPUs treat as possible dependencies
// ("4K aliasing"). Measured at the encoder shape (one thread, CPU time), the dense buffers
// made the backward 1.3x (encoder-like points) to 1.8x (uniform points) faster, copies
// included. Only the rows [token_begin, token_end) of the buffers are used.
template <typename T>
struct DenseSlice {
  std::vector<T> value, grad;
  int64_t stride = 0;  // Mg * D: floats from one token's row to the next

  void load(const T* value_all, const BackwardTasks::Task& t, const MsdaDims& d) {
    stride = t.Mg * d.D;
    const size_t n = static_cast<size_t>(d.Lv * stride);
    if (value.size() < n) value.resize(n), grad.resize(n);
    const int64_t MD = d.M * d.D;
    const T* src = value_all + (t.b * d.Lv + t.token_begin) * MD + t.m_begin * d.D;
    T* v = value.data() + t.token_begin * stride;
    for (int64_t token = t.token_begin; token < t.token_end; ++token, src += MD, v += stride)
      std::copy(src, src + stride, v);
    std::fill(grad.data() + t.token_begin * stride, grad.data() + t.token_end * stride, T(0));
  }
  void store(T* grad_value, const BackwardTasks::Task& t, const MsdaDims& d) const {
    const int64_t MD = d.M * d.D;
    T* dst = grad_value + (t.b * d.Lv + t.token_begin) * MD + t.m_begin * d.D;
    const T* g = grad.data() + t.token_begin * stride;
    for (int64_t token = t.token_begin; token < t.token_end; ++token, dst += MD, g += stride)
      std::copy(g, g + stride, dst);
  }
};

// Prefetches n bytes from p, a cache line at a time (for writing if `write`).
inline void prefetch_bytes(const void* p, int64_t n, bool write) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < n; i += 64) write ? __builtin_prefetch(c + i, 1) : __builtin_prefetch(c + i);
}

// A backward task walks the (query, head) items of one head: its loc, attn, grad_out,
// grad_loc and grad_attn rows lie M items apart (1 KB and more at the encoder shape), a stride
// the hardware prefetchers lose at every page boundary, so they are fetched some items ahead.
constexpr int64_t kStreamAhead = 4;

template <typename T>
void prefetch_item_streams(int64_t item, const T* loc, const T* attn, const T* grad_out,
                           T* grad_loc, T* grad_attn, int64_t LP, int64_t D) {
  const int64_t s = sizeof(T);
  prefetch_bytes(loc + item * LP * 2, LP * 2 * s, false);
  prefetch_bytes(attn + item * LP, LP * s, false);
  prefetch_bytes(grad_out + item * D, D * s, false);
  prefetch_bytes(grad_loc + item * LP * 2, LP * 2 * s, true);
  prefetch_bytes(grad_attn + item * LP, LP * s, true);
}

// Runs fn(task, state) for task in [0, n) on the pool's threads, handing out tasks in order as
// threads become free (the tasks running at the same time are neighbours, and a slow thread
// takes fewer). Each thread has one State, reused by its tasks.
template <typename State, typename F>
void for_each_task(int64_t n, const F& fn) {
  std::atomic<int64_t> next{0};
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    State state;
    for (int64_t t = next.fetch_add(1); t < n; t = next.fetch_add(1)) fn(t, state);
  });
}

}  // namespace
}  // namespace ddetr_ops

// The AVX-512 kernels use Levels, MsdaDims, BackwardTasks, DenseSlice and for_each_task.
#include "ms_deform_attn_cpu_avx512.h"

namespace ddetr_ops {
namespace {

// Which CPU code path runs: "avx512" when the CPU has it and DDETR_OPS_CPU_PATH is not
// "portable" (read at every call, so tests can cover both paths in one process).
enum class CpuPath { kPortable, kAvx512 };

CpuPath cpu_path() {
#ifdef MSDA_HAVE_AVX512
  static const bool has_avx512 = avx512::cpu_has_avx512();
  const char* env = std::getenv("DDETR_OPS_CPU_PATH");
  const bool portable = env != nullptr && std::string(env) == "portable";
  return has_avx512 && !portable ? CpuPath::kAvx512 : CpuPath::kPortable;
#else
  return CpuPath::kPortable;
#endif
}

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

// Footprints and corner rows of the points of one (query, head) on a range of levels, for
// the backward. Off-map corners read a zero row and write their (unused) gradient into a
// scratch row, so the channel loops have no branches.
template <typename T>
struct BackwardList {
  std::vector<Footprint<T>> fp;
  std::vector<int32_t> level;
  std::vector<const T*> rows;
  std::vector<T*> grad_rows;
  explicit BackwardList(int64_t LP) : fp(LP), level(LP), rows(4 * LP), grad_rows(4 * LP) {}

  // Returns the number of points that touch the map; only those are kept.
  int64_t build(const T* loc, const Levels& lv, int64_t l_begin, int64_t l_end, int64_t P,
                const T* value_head, T* grad_head, int64_t MD, const T* zero_row, T* scratch,
                std::vector<int64_t>& point_index) {
    int64_t n = 0;
    for (int64_t l = l_begin; l < l_end; ++l) {
      for (int64_t p = 0; p < P; ++p) {
        const int64_t i = l * P + p;
        Footprint<T>& f = fp[n];
        if (!bilinear_footprint<T>(loc[2 * i], loc[2 * i + 1], lv.H[l], lv.W[l], lv.start[l], f))
          continue;
        level[n] = static_cast<int32_t>(l);
        point_index[n] = i;
        for (int c = 0; c < 4; ++c) {
          const bool ok = f.token[c] >= 0;
          const int64_t off = static_cast<int64_t>(f.token[c]) * MD;
          rows[4 * n + c] = ok ? value_head + off : zero_row;
          grad_rows[4 * n + c] = ok ? grad_head + off : scratch;
          __builtin_prefetch(rows[4 * n + c]);
          __builtin_prefetch(grad_rows[4 * n + c], 1);
        }
        ++n;
      }
    }
    return n;
  }
};

// The gradients of the points of one (query, head) from its backward list. NB > 0: D is
// exactly NB SIMD blocks, known at compile time, so grad_out and the four dot-product
// accumulators stay in registers; NB = 0: any D.
template <typename T, int NB>
void backward_points(const BackwardList<T>& list, const int64_t* index, int64_t n,
                     const T* go, const T* attn, T* grad_attn, T* grad_loc, const Levels& lv,
                     int64_t D) {
  using S = Simd<T>;
  using V = typename S::type;
  constexpr int64_t K = S::size;
  V g[NB > 0 ? NB : 1];
  if constexpr (NB > 0) {
    for (int b = 0; b < NB; ++b) g[b] = S::load(go + b * K);
  }
  for (int64_t j = 0; j < n; ++j) {
    const Footprint<T>& f = list.fp[j];
    const int64_t i = index[j];  // l * P + p within the item
    const T a = attn[i];
    V acc[4] = {};  // per-lane partial sums of <value row, grad_out>
    T tail[4] = {};  // the same for channels past the last full block (NB = 0 only)
    for (int c = 0; c < 4; ++c) {
      const T* v = list.rows[4 * j + c];
      T* gr = list.grad_rows[4 * j + c];
      const T wa = f.weight[c] * a;
      if constexpr (NB > 0) {
        for (int b = 0; b < NB; ++b) {
          acc[c] += S::load(v + b * K) * g[b];
          S::store(gr + b * K, S::load(gr + b * K) + g[b] * wa);
        }
      } else {
        tail[c] = corner_backward<T>(v, go, gr, wa, D, acc[c]);
      }
    }
    const int32_t H = lv.H[list.level[j]], W = lv.W[list.level[j]];
    V va, vx, vy;
    bilinear_point_grads<T, V>(f, acc, a, H, W, va, vx, vy);
    T sa = T(0), sx = T(0), sy = T(0);
    if (NB == 0 && D % K != 0) bilinear_point_grads<T, T>(f, tail, a, H, W, sa, sx, sy);
    grad_attn[i] = LaneSum<T, 64>::sum(va) + sa;
    grad_loc[2 * i] = LaneSum<T, 64>::sum(vx) + sx;
    grad_loc[2 * i + 1] = LaneSum<T, 64>::sum(vy) + sy;
  }
}

template <typename T>
void backward_kernel(const T* grad_out, const T* value, const Levels& lv, const T* loc,
                     const T* attn, T* grad_value, T* grad_loc, T* grad_attn,
                     const MsdaDims& d) {
  constexpr int64_t K = Simd<T>::size;
  const int64_t MD = d.M * d.D, LP = d.L * d.P, D = d.D;
  // Tasks: BackwardTasks. Inside a task, the (query, head) items run in memory order; with
  // one head per task that is a stride of M items, so their streams are prefetched ahead.
  const int64_t nb = D % K == 0 ? D / K : 0;
  const auto process = nb == 1   ? backward_points<T, 1>
                       : nb == 2 ? backward_points<T, 2>
                       : nb == 4 ? backward_points<T, 4>
                                 : backward_points<T, 0>;
  const BackwardTasks tasks(d, lv, at::get_num_threads());
#ifdef MSDA_HAVE_AVX512
  if constexpr (std::is_same_v<T, float>) {
    if (avx512::supports(d.D, d.Lv, d.M) && cpu_path() == CpuPath::kAvx512) {
      const auto run = d.D == 16 ? avx512::backward<1> : d.D == 32 ? avx512::backward<2> : avx512::backward<4>;
      run(grad_out, value, lv, loc, attn, grad_value, grad_loc, grad_attn, d, tasks);
      return;
    }
  }
#endif
  for_each_task<DenseSlice<T>>(tasks.count, [&](int64_t task, DenseSlice<T>& slice) {
    const auto t = tasks(task, d);
    slice.load(value, t, d);
    const std::vector<T> zero_row(D, T(0));
    std::vector<T> scratch(D);
    BackwardList<T> cur(LP), next(LP);
    std::vector<int64_t> cur_index(LP), next_index(LP);
    const int64_t b = t.b, m_begin = t.m_begin, Mg = t.Mg, stride = slice.stride;
    // Work items k = q * Mg + (m - m_begin), i.e. (query, head) in memory order.
    auto item_of = [&](int64_t k) { return (b * d.Lq + k / Mg) * d.M + m_begin + k % Mg; };
    auto build = [&](BackwardList<T>& list, std::vector<int64_t>& index, int64_t k) {
      const int64_t h = (item_of(k) % d.M - m_begin) * D;
      return list.build(loc + item_of(k) * LP * 2, lv, t.l_begin, t.l_end, d.P,
                        slice.value.data() + h, slice.grad.data() + h, stride, zero_row.data(),
                        scratch.data(), index);
    };
    const int64_t n_items = d.Lq * Mg;
    int64_t n_next = n_items > 0 ? build(next, next_index, 0) : 0;
    for (int64_t k = 0; k < n_items; ++k) {
      std::swap(cur, next);
      std::swap(cur_index, next_index);
      const int64_t n = n_next;
      if (k + 1 < n_items) n_next = build(next, next_index, k + 1);  // prefetches its rows
      if (k + kStreamAhead < n_items)
        prefetch_item_streams(item_of(k + kStreamAhead), loc, attn, grad_out, grad_loc, grad_attn, LP, D);
      const int64_t item = item_of(k);
      // Points that miss the map are not in the list: their gradients are 0.
      std::fill(grad_attn + item * LP + t.l_begin * d.P, grad_attn + item * LP + t.l_end * d.P, T(0));
      std::fill(grad_loc + (item * LP + t.l_begin * d.P) * 2, grad_loc + (item * LP + t.l_end * d.P) * 2, T(0));
      process(cur, cur_index.data(), n, grad_out + item * D, attn + item * LP,
              grad_attn + item * LP, grad_loc + item * LP * 2, lv, D);
    }
    slice.store(grad_value, t, d);
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
  if (out.numel() == 0) return out.to(value.scalar_type());
#ifdef MSDA_HAVE_AVX512
  if (ct == at::kFloat && avx512::supports(d.D, d.Lv, d.M) && cpu_path() == CpuPath::kAvx512) {
    const auto run = d.D == 16 ? avx512::forward<1> : d.D == 32 ? avx512::forward<2> : avx512::forward<4>;
    run(v.data_ptr<float>(), lv, loc.data_ptr<float>(), attn.data_ptr<float>(),
        out.data_ptr<float>(), d);
    return out.to(value.scalar_type());
  }
#endif
  {
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
  // The kernels write every element (zeroing grad_value slice by slice as they go).
  const bool run = d.B > 0 && d.M > 0 && d.D > 0;
  auto grad_value = run ? at::empty(v.sizes(), v.options()) : at::zeros(v.sizes(), v.options());
  auto grad_loc = at::empty(loc.sizes(), loc.options());
  auto grad_attn = at::empty(attn.sizes(), attn.options());
  if (run) {
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
  // Which CPU code path float32 calls take now ("avx512" or "portable"), for tests and benchmarks.
  m.def("cpu_path() -> str", [] { return std::string(cpu_path() == CpuPath::kAvx512 ? "avx512" : "portable"); });
}

TORCH_LIBRARY_IMPL(ddetr_ops, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace ddetr_ops
