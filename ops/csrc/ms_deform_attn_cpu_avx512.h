// AVX-512 kernels for float32 with D = 16, 32 or 64 (Deformable DETR: D = 32, two vectors).
//
// What the portable kernels in ms_deform_attn_cpu.cpp do one point at a time, these do for 16
// points at once: the bilinear footprints (corner rows, weights, validity) of a (query, head)'s
// L * P points are computed in 16-lane vectors, with the formulas of ms_deform_attn_math.h
// (bilinear_footprint, bilinear_point_grads) written in intrinsics. The forward's channel
// loop keeps one accumulator pair per corner (8 independent FMA chains instead of 2); off-map
// corners read a row of zeros with weight 0 (forward) or are skipped (backward), so, as in
// grid_sample, they contribute exactly 0 even next to inf/NaN. Footprints are computed a few
// (query, head) items ahead and their rows prefetched into L2 while the current item is
// summed (measured here: one item ahead, or prefetching in a burst, left uniformly spread
// points waiting on memory).
//
// Compiled with a target attribute, so the file builds with any x86-64 flags; the caller runs
// it only if the CPU reports AVX-512 F/DQ at run time (cpu_has_avx512) and
// DDETR_OPS_CPU_PATH is not "portable" (the switch the tests use to cover both paths).
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MSDA_HAVE_AVX512 1
#include <immintrin.h>

#include <cstdint>
#include <vector>

#define MSDA_AVX512 __attribute__((target("avx512f,avx512dq")))

namespace ddetr_ops {
namespace avx512 {

inline bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
}

// Per-lane constants of an item's points, in chunks of 16: point i = 16 * chunk + lane sits on
// level i / P. Lanes past L * P are masked off.
struct PointTable {
  int64_t n_points, n_chunks;
  std::vector<float> W, H;           // level width / height as float (0 for an emptied level)
  std::vector<int32_t> Wi, Hi, start;
  std::vector<uint16_t> lanes;       // valid lanes per chunk
  std::vector<uint16_t> active;      // lanes whose level lies in [l_begin, l_end)
  PointTable(const Levels& lv, int64_t P, int64_t l_begin = 0, int64_t l_end = -1) {
    const int64_t L = static_cast<int64_t>(lv.H.size());
    n_points = L * P;
    n_chunks = (n_points + 15) / 16;
    const int64_t n = n_chunks * 16;
    W.assign(n, 0.f), H.assign(n, 0.f), Wi.assign(n, 0), Hi.assign(n, 0), start.assign(n, 0);
    lanes.assign(n_chunks, 0);
    active.assign(n_chunks, 0);
    if (l_end < 0) l_end = L;
    for (int64_t i = 0; i < n_points; ++i) {
      const int64_t l = i / P;
      if (l >= l_begin && l < l_end) active[i / 16] |= static_cast<uint16_t>(1u << (i % 16));
      W[i] = static_cast<float>(lv.W[l]), H[i] = static_cast<float>(lv.H[l]);
      Wi[i] = lv.W[l], Hi[i] = lv.H[l], start[i] = lv.start[l];
      lanes[i / 16] |= static_cast<uint16_t>(1u << (i % 16));
    }
  }
};

// The footprints of one item's points: per chunk, four corners x 16 lanes of row offsets
// (elements from the head's first row), weights and validity bits; for the forward also the
// row pointers themselves (off-map corners point at a row of zeros).
struct Footprints {
  std::vector<int32_t> offset;  // [chunk][corner][lane]
  std::vector<const float*> row;  // [chunk][corner][lane], forward only
  std::vector<float> weight;    // bilinear weight, times the attention weight (forward only)
  std::vector<float> fx, fy, attn;  // [chunk][lane], for the backward
  std::vector<uint16_t> valid;  // [chunk][corner] lane bits: the corner is on the map
  std::vector<uint16_t> inside;  // [chunk] lane bits: the point touches the map
  explicit Footprints(int64_t n_chunks)
      : offset(n_chunks * 64), row(n_chunks * 64), weight(n_chunks * 64), fx(n_chunks * 16),
        fy(n_chunks * 16), attn(n_chunks * 16), valid(n_chunks * 4), inside(n_chunks) {}
};

// Fills `fp` for the item whose locations are `loc` (L * P pairs x, y) and attention weights
// `attn`; rows are `MD` floats apart. Forward (zero_row given): weights include the attention
// weight, row pointers are filled and the first cache line of each row is prefetched (the
// next line comes with it: rows of 32 floats are two aligned lines). Backward (zero_row null):
// offsets, bilinear weights and fractions only.
MSDA_AVX512 inline void footprints(const float* loc, const float* attn, const PointTable& t,
                                   int32_t MD, const float* value_head, const float* zero_row,
                                   Footprints& fp) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f), m1 = _mm512_set1_ps(-1.f);
  const __m512i ione = _mm512_set1_epi32(1), zero = _mm512_setzero_si512();
  const __m512i mdv = _mm512_set1_epi32(MD);
  const __m512i base = _mm512_set1_epi64(reinterpret_cast<int64_t>(value_head));
  const __m512i zrow = _mm512_set1_epi64(reinterpret_cast<int64_t>(zero_row));
  for (int64_t k = 0; k < t.n_chunks; ++k) {
    const __mmask16 lanes = t.lanes[k];
    // x, y of 16 points: 32 interleaved floats, loaded as two masked halves and deinterleaved.
    const int n_here = __builtin_popcount(lanes);
    const __mmask16 lo = static_cast<__mmask16>(n_here >= 8 ? 0xFFFF : (1u << (2 * n_here)) - 1);
    const __mmask16 hi = static_cast<__mmask16>(n_here <= 8 ? 0 : (1u << (2 * (n_here - 8))) - 1);
    // Masked loads cost much more than plain ones on some CPUs (measured on AMD Zen 4): a
    // full chunk uses plain loads, only the last partial one masked ones.
    const bool full = n_here == 16;
    const __m512 p0 = full ? _mm512_loadu_ps(loc + 32 * k) : _mm512_maskz_loadu_ps(lo, loc + 32 * k);
    const __m512 p1 = full ? _mm512_loadu_ps(loc + 32 * k + 16) : _mm512_maskz_loadu_ps(hi, loc + 32 * k + 16);
    __m512 x = _mm512_permutex2var_ps(p0, even, p1);
    __m512 y = _mm512_permutex2var_ps(p0, odd, p1);
    const __m512 a = full ? _mm512_loadu_ps(attn + 16 * k) : _mm512_maskz_loadu_ps(lanes, attn + 16 * k);  // attn: null-free, all items
    const __m512 W = _mm512_loadu_ps(t.W.data() + 16 * k);
    const __m512 H = _mm512_loadu_ps(t.H.data() + 16 * k);
    x = _mm512_fmsub_ps(x, W, half);  // x = loc_x * W - 0.5, as bilinear_footprint
    y = _mm512_fmsub_ps(y, H, half);
    // Ordered comparisons: NaN is outside.
    __mmask16 in = _mm512_mask_cmp_ps_mask(t.active[k], x, m1, _CMP_GT_OQ);
    in = _mm512_mask_cmp_ps_mask(in, y, m1, _CMP_GT_OQ);
    in = _mm512_mask_cmp_ps_mask(in, x, W, _CMP_LT_OQ);
    in = _mm512_mask_cmp_ps_mask(in, y, H, _CMP_LT_OQ);
    const __m512 minus2 = _mm512_set1_ps(-2.f);  // keeps the int conversion in range
    x = _mm512_mask_blend_ps(in, minus2, x);
    y = _mm512_mask_blend_ps(in, minus2, y);
    const __m512 x0f = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 y0f = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512i x0 = _mm512_cvttps_epi32(x0f), y0 = _mm512_cvttps_epi32(y0f);
    const __m512 fx = _mm512_sub_ps(x, x0f), fy = _mm512_sub_ps(y, y0f);
    const __m512 gx = _mm512_sub_ps(one, fx), gy = _mm512_sub_ps(one, fy);
    const __m512i Wi = _mm512_loadu_si512(t.Wi.data() + 16 * k);
    const __m512i Hi = _mm512_loadu_si512(t.Hi.data() + 16 * k);
    const __mmask16 left = _mm512_mask_cmp_epi32_mask(in, x0, zero, _MM_CMPINT_NLT);
    const __mmask16 right = _mm512_mask_cmp_epi32_mask(in, _mm512_add_epi32(x0, ione), Wi, _MM_CMPINT_LT);
    const __mmask16 top = _mm512_cmp_epi32_mask(y0, zero, _MM_CMPINT_NLT);
    const __mmask16 bottom = _mm512_cmp_epi32_mask(_mm512_add_epi32(y0, ione), Hi, _MM_CMPINT_LT);
    const __m512i token = _mm512_add_epi32(_mm512_loadu_si512(t.start.data() + 16 * k),
                                           _mm512_add_epi32(_mm512_mullo_epi32(y0, Wi), x0));
    const __m512i row = _mm512_mullo_epi32(token, mdv);
    const __m512i down = _mm512_mullo_epi32(Wi, mdv);
    const __mmask16 v[4] = {static_cast<__mmask16>(left & top), static_cast<__mmask16>(right & top),
                            static_cast<__mmask16>(left & bottom), static_cast<__mmask16>(right & bottom)};
    const __m512i off[4] = {row, _mm512_add_epi32(row, mdv), _mm512_add_epi32(row, down),
                            _mm512_add_epi32(_mm512_add_epi32(row, down), mdv)};
    const __m512 w[4] = {_mm512_mul_ps(gy, gx), _mm512_mul_ps(gy, fx), _mm512_mul_ps(fy, gx),
                         _mm512_mul_ps(fy, fx)};
    for (int c = 0; c < 4; ++c) {
      // Off-map corners: offset 0, weight 0 and their bit cleared.
      const __m512i oc = _mm512_maskz_mov_epi32(v[c], off[c]);
      _mm512_storeu_si512(fp.offset.data() + 64 * k + 16 * c, oc);
      fp.valid[4 * k + c] = v[c];
      if (zero_row == nullptr) {
        _mm512_storeu_ps(fp.weight.data() + 64 * k + 16 * c, _mm512_maskz_mov_ps(v[c], w[c]));
        continue;
      }
      _mm512_storeu_ps(fp.weight.data() + 64 * k + 16 * c, _mm512_maskz_mul_ps(v[c], w[c], a));
      // 64-bit row pointers, 8 lanes at a time: head + 4 * offset, or the zero row.
      for (int h = 0; h < 2; ++h) {
        const __m512i o64 = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(oc, h));
        const __m512i ptr = _mm512_add_epi64(base, _mm512_slli_epi64(o64, 2));
        const __mmask8 vh = static_cast<__mmask8>(v[c] >> (8 * h));
        _mm512_storeu_si512(fp.row.data() + 64 * k + 16 * c + 8 * h, _mm512_mask_blend_epi64(vh, zrow, ptr));
      }
    }
    _mm512_storeu_ps(fp.fx.data() + 16 * k, fx);
    _mm512_storeu_ps(fp.fy.data() + 16 * k, fy);
    _mm512_storeu_ps(fp.attn.data() + 16 * k, a);
    fp.inside[k] = in;
  }
}

// out[0:16 NB] = sum of weight * row over an item's corners (off-map ones read the zero row,
// with weight 0), one accumulator per corner and block: 4 NB independent FMA chains.
template <int NB>
MSDA_AVX512 inline void weighted_sum(const Footprints& fp, const PointTable& t, float* out,
                                     const Footprints& next) {
  __m512 acc[4][NB];
  for (int c = 0; c < 4; ++c)
    for (int b = 0; b < NB; ++b) acc[c][b] = _mm512_setzero_ps();
  for (int64_t k = 0; k < t.n_chunks; ++k) {
    const int n = __builtin_popcount(t.lanes[k]);
    const float* const* rows = fp.row.data() + 64 * k;
    const float* w = fp.weight.data() + 64 * k;
    const float* const* next_rows = next.row.data() + 64 * k;
    for (int j = 0; j < n; ++j) {
      for (int c = 0; c < 4; ++c) {
        // The next item's rows are fetched while this one is summed, one row per corner:
        // spread out, the prefetches do not pile up in the miss queue.
        const char* nr = reinterpret_cast<const char*>(next_rows[16 * c + j]);
        _mm_prefetch(nr, _MM_HINT_T1);
        _mm_prefetch(nr + 64, _MM_HINT_T1);
        const float* r = rows[16 * c + j];
        const __m512 wc = _mm512_set1_ps(w[16 * c + j]);
        for (int b = 0; b < NB; ++b) acc[c][b] = _mm512_fmadd_ps(_mm512_loadu_ps(r + 16 * b), wc, acc[c][b]);
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    _mm512_storeu_ps(out + 16 * b, _mm512_add_ps(_mm512_add_ps(acc[0][b], acc[1][b]),
                                                 _mm512_add_ps(acc[2][b], acc[3][b])));
}

// Whether these kernels can run this problem: float32, D = 16, 32 or 64, and every row offset
// representable in int32 (Lv * M * D < 2^31).
inline bool supports(int64_t D, int64_t Lv, int64_t M) {
  return (D == 16 || D == 32 || D == 64) && Lv * M * D < (int64_t(1) << 31) - 64;
}

// How many (query, head) items ahead the rows are prefetched: DRAM latency (~100 ns) is a few
// items' work.
constexpr int64_t kAhead = 2;

template <int NB>
MSDA_AVX512 void forward(const float* value, const Levels& lv, const float* loc, const float* attn,
                         float* out, const MsdaDims& d) {
  const PointTable table(lv, d.P);
  const int64_t LP = d.L * d.P, MD = d.M * d.D;
  at::parallel_for(0, d.B * d.Lq, 16, [&](int64_t begin, int64_t end) {
    // A ring of footprints: item k + kAhead is located while item k is summed, and its rows
    // are prefetched during that sum, so they have kAhead items' time to arrive from memory.
    std::vector<Footprints> ring(kAhead + 1, Footprints(table.n_chunks));
    const std::vector<float> zero_row(d.D, 0.f);
    const int64_t first = begin * d.M, last = end * d.M;
    auto locate = [&](int64_t item) {  // items are (b, q, m) in memory order
      const float* head = value + (item / (d.Lq * d.M)) * d.Lv * MD + (item % d.M) * d.D;
      footprints(loc + item * LP * 2, attn + item * LP, table, static_cast<int32_t>(MD), head,
                 zero_row.data(), ring[item % (kAhead + 1)]);
    };
    for (int64_t item = first; item < std::min(first + kAhead, last); ++item) locate(item);
    for (int64_t item = first; item < last; ++item) {
      const int64_t ahead = item + kAhead;
      if (ahead < last) locate(ahead);
      weighted_sum<NB>(ring[item % (kAhead + 1)], table, out + item * d.D, ring[ahead % (kAhead + 1)]);
    }
  });
}

// Lane mask of the (x, y) pairs of 8 points: bit i of `points` -> bits 2i and 2i + 1.
inline __mmask16 pairs(uint32_t points) {
  uint32_t m = 0;
  for (int i = 0; i < 8; ++i) m |= ((points >> i) & 1u) * (3u << (2 * i));
  return static_cast<__mmask16>(m);
}

// The gradients of one (query, head) item from its footprints: grad_value rows (a scatter;
// the caller's task owns them), and, 16 points at a time, grad_attn and grad_loc from the
// four corner dot products <row, grad_out> (ms_deform_attn_math.h, bilinear_point_grads).
template <int NB>
MSDA_AVX512 inline void backward_item(const Footprints& fp, const PointTable& t, const float* go,
                                      const float* value_head, float* grad_head, float* grad_attn,
                                      float* grad_loc, const Footprints& next,
                                      const float* next_value_head, float* next_grad_head) {
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  __m512 g[NB];
  for (int b = 0; b < NB; ++b) g[b] = _mm512_loadu_ps(go + 16 * b);
  alignas(64) float dots[4][16];
  for (int64_t k = 0; k < t.n_chunks; ++k) {
    const __mmask16 in = fp.inside[k];
    for (int c = 0; c < 4; ++c) _mm512_store_ps(dots[c], _mm512_setzero_ps());
    const float* attn = fp.attn.data() + 16 * k;
    for (uint32_t bits = in; bits; bits &= bits - 1) {
      const int j = __builtin_ctz(bits);
      for (int c = 0; c < 4; ++c) {
        const int64_t e = 64 * k + 16 * c + j;
        // Rows of a later item (its offsets are known: the ring runs ahead): value rows to
        // read, gradient rows to read and write (prefetchw).
        const int32_t no = next.offset[e];
        _mm_prefetch(reinterpret_cast<const char*>(next_value_head + no), _MM_HINT_T1);
        __builtin_prefetch(next_grad_head + no, 1, 2);
        if (!((fp.valid[4 * k + c] >> j) & 1)) continue;
        const float* v = value_head + fp.offset[e];
        float* gr = grad_head + fp.offset[e];
        const __m512 wa = _mm512_set1_ps(fp.weight[e] * attn[j]);
        __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(v), g[0]);
        for (int b = 1; b < NB; ++b) acc = _mm512_fmadd_ps(_mm512_loadu_ps(v + 16 * b), g[b], acc);
        for (int b = 0; b < NB; ++b)
          _mm512_storeu_ps(gr + 16 * b, _mm512_fmadd_ps(g[b], wa, _mm512_loadu_ps(gr + 16 * b)));
        dots[c][j] = _mm512_reduce_add_ps(acc);
      }
    }
    // Per-point gradients, 16 lanes at once (zero for points off the map: their dots are 0).
    const __m512 g0 = _mm512_load_ps(dots[0]), g1 = _mm512_load_ps(dots[1]);
    const __m512 g2 = _mm512_load_ps(dots[2]), g3 = _mm512_load_ps(dots[3]);
    const __m512 fx = _mm512_loadu_ps(fp.fx.data() + 16 * k), fy = _mm512_loadu_ps(fp.fy.data() + 16 * k);
    const __m512 one = _mm512_set1_ps(1.f);
    const __m512 gx = _mm512_sub_ps(one, fx), gy = _mm512_sub_ps(one, fy);
    const __m512 a = _mm512_loadu_ps(attn);
    const float* w = fp.weight.data() + 64 * k;  // bilinear weights, 0 off the map
    __m512 ga = _mm512_mul_ps(g0, _mm512_loadu_ps(w));
    ga = _mm512_fmadd_ps(g1, _mm512_loadu_ps(w + 16), ga);
    ga = _mm512_fmadd_ps(g2, _mm512_loadu_ps(w + 32), ga);
    ga = _mm512_fmadd_ps(g3, _mm512_loadu_ps(w + 48), ga);
    const __m512 aW = _mm512_mul_ps(a, _mm512_loadu_ps(t.W.data() + 16 * k));
    const __m512 aH = _mm512_mul_ps(a, _mm512_loadu_ps(t.H.data() + 16 * k));
    const __m512 dx = _mm512_mul_ps(_mm512_fmadd_ps(_mm512_sub_ps(g1, g0), gy,
                                                    _mm512_mul_ps(_mm512_sub_ps(g3, g2), fy)), aW);
    const __m512 dy = _mm512_mul_ps(_mm512_fmadd_ps(_mm512_sub_ps(g2, g0), gx,
                                                    _mm512_mul_ps(_mm512_sub_ps(g3, g1), fx)), aH);
    const __mmask16 act = t.active[k];  // this task's levels only: others belong to other tasks
    const __m512 xy_lo = _mm512_permutex2var_ps(dx, lo_idx, dy);
    const __m512 xy_hi = _mm512_permutex2var_ps(dx, hi_idx, dy);
    if (act == 0xFFFF) {  // plain stores where they can: like masked loads, masked stores are slow
      _mm512_storeu_ps(grad_attn + 16 * k, ga);
      _mm512_storeu_ps(grad_loc + 32 * k, xy_lo);
      _mm512_storeu_ps(grad_loc + 32 * k + 16, xy_hi);
    } else {
      _mm512_mask_storeu_ps(grad_attn + 16 * k, act, ga);
      _mm512_mask_storeu_ps(grad_loc + 32 * k, pairs(act & 0xFF), xy_lo);
      _mm512_mask_storeu_ps(grad_loc + 32 * k + 16, pairs(act >> 8), xy_hi);
    }
  }
}

// The backward over the portable kernel's tasks (BackwardTasks: batch element, head, range of
// levels; disjoint grad_value slices, each scattered into a dense per-thread DenseSlice);
// within a task, items in memory order.
template <int NB>
MSDA_AVX512 void backward(const float* grad_out, const float* value, const Levels& lv,
                          const float* loc, const float* attn, float* grad_value, float* grad_loc,
                          float* grad_attn, const MsdaDims& d, const BackwardTasks& tasks) {
  const int64_t LP = d.L * d.P;
  for_each_task<DenseSlice<float>>(tasks.count, [&](int64_t task, DenseSlice<float>& slice) {
    const auto t = tasks(task, d);
    slice.load(value, t, d);
    const int64_t b = t.b, m_begin = t.m_begin, Mg = t.Mg;
    const PointTable table(lv, d.P, t.l_begin, t.l_end);
    std::vector<Footprints> ring(kAhead + 1, Footprints(table.n_chunks));
    auto item_of = [&](int64_t k) { return (b * d.Lq + k / Mg) * d.M + m_begin + k % Mg; };
    auto head = [&](int64_t item) { return (item % d.M - m_begin) * d.D; };  // in the slice
    auto locate = [&](int64_t k) {
      const int64_t item = item_of(k);
      footprints(loc + item * LP * 2, attn + item * LP, table, static_cast<int32_t>(slice.stride),
                 nullptr, nullptr, ring[k % (kAhead + 1)]);
    };
    const float* v = slice.value.data();
    float* g = slice.grad.data();
    const int64_t n_items = d.Lq * Mg;
    for (int64_t k = 0; k < std::min(kAhead, n_items); ++k) locate(k);
    for (int64_t k = 0; k < n_items; ++k) {
      const int64_t ahead = k + kAhead;
      if (ahead < n_items) locate(ahead);
      if (ahead + kStreamAhead < n_items)  // locate() reads loc and attn kAhead items early
        prefetch_item_streams(item_of(ahead + kStreamAhead), loc, attn, grad_out, grad_loc,
                              grad_attn, LP, d.D);
      const int64_t item = item_of(k);
      const int64_t next_item = item_of(std::min(ahead, n_items - 1));
      backward_item<NB>(ring[k % (kAhead + 1)], table, grad_out + item * d.D, v + head(item),
                        g + head(item), grad_attn + item * LP, grad_loc + item * LP * 2,
                        ring[std::min(ahead, n_items - 1) % (kAhead + 1)], v + head(next_item),
                        g + head(next_item));
    }
    slice.store(grad_value, t, d);
  });
}

}  // namespace avx512
}  // namespace ddetr_ops
#endif
