// CPU kernels of the fused set-transformer blocks (setflow.nn.kernels), float32:
//   1. multi-head self-attention with counter-based hash dropout, forward and backward;
//   2. bias + GELU + hash dropout of the feed-forward hidden layer, forward and backward.
//
// Built and loaded at run time by setflow/nn/kernels.py (g++ -O3 -march=native -fopenmp); plain C
// entry points called through ctypes, so no PyTorch headers are needed and the build takes seconds.
//
// Attention layout (row-major): qkv (B, N, 3, H, HD); out and dout (B, N, H, HD); lse (B, H, N);
// dqkv like qkv. Per head (b, h), with q pre-multiplied by scale = 1 / sqrt(HD):
//     P = softmax(q k^T),  A = P * M,  out = A v,   M[i, j] = keep(i, j) * dscale,
// keep(i, j) = hash32(((b * H + h) * N + i) * N + j) >> 8 < levels, the same hash and index as
// setflow.nn.fused.hash_keep_mask on a (B, H, N, N) tensor, so the masks are bit-identical.
// levels >= 2^24 means no dropout.
//
// Vectorisation: 16 lanes of GCC vector types (AVX-512 registers with -march=native on such CPUs,
// split by the compiler elsewhere). A set's q, k, v are loaded once for all heads; every inner loop
// runs along one axis of the N x N weight tiles with 16 (head, row) pairs in the lanes (see Group),
// so softmax sums and maxima are lane-wise and no horizontal reductions are needed. The backward
// recomputes P from lse (FlashAttention-style) with keys in the lanes, accumulating dk and dv in
// registers and keeping dS (N x H N) for dq = dS k, a small GEMM per head done last. The softmax
// backward needs rowdot_i = sum_j P_ij dP_ij with dP_ij = M_ij (dout_i . v_j), which equals
// dout_i . out_i.
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr int L = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));

// x in every lane (written out: `vf{} + x` would cost a scalar addition of +0.0 per call, which the
// compiler must keep for x = -0.0, and block broadcast operands of the FMAs)
inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline vu lane_index() { return vu{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }

// exp(x) for x <= ~0 (softmax arguments): Cody-Waite range reduction and a degree-7 polynomial in
// Horner form (relative error ~2e-7); arguments below -87 give ~1e-38 instead of underflowing. On
// AVX-512 the power of two is applied with one vscalefps.
inline vf vexp(vf x) {
#ifdef __AVX512F__
  x = reinterpret_cast<vf>(_mm512_max_ps(reinterpret_cast<__m512>(x), _mm512_set1_ps(-87.0f)));
#else
  x = x < -87.0f ? splat(-87.0f) : x;
#endif
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting rounds to an integer
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
#ifdef __AVX512F__
  return reinterpret_cast<vf>(_mm512_scalef_ps(reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(n)));
#else
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * (vf)e;  // GCC vector cast: the same bits read as floats
#endif
}

// log(x) for x >= 1 (a softmax denominator): x = 2^e m with m in [sqrt(1/2), sqrt(2)), then
// log m = 2 atanh(u), u = (m - 1) / (m + 1), |u| < 0.172, by its odd series to u^9 (error < 1e-8)
inline vf vlog_ge1(vf x) {
  const vu bits = reinterpret_cast<vu>(x);
  vi e = reinterpret_cast<vi>(bits >> 23) - 127;
  vu mb = (bits & 0x007FFFFFu) | 0x3F800000u;  // m in [1, 2)
  const vi big = reinterpret_cast<vf>(mb) > 1.41421356f;
  mb = big ? mb - 0x00800000u : mb;  // m / 2 in [0.707, 1)
  e = big ? e + 1 : e;
  const vf m = reinterpret_cast<vf>(mb);
  const vf u = (m - 1.0f) / (m + 1.0f);
  const vf u2 = u * u;
  vf p = u2 * (1.0f / 9.0f) + (1.0f / 7.0f);
  p = p * u2 + (1.0f / 5.0f);
  p = p * u2 + (1.0f / 3.0f);
  p = p * u2 + 1.0f;
  return __builtin_convertvector(e, vf) * 0.693147180559945309f + 2.0f * u * p;
}

// 1 / x for x >= 1: the AVX-512 14-bit reciprocal estimate and one Newton step (~1 ulp; a vector
// division costs several times more), plain division elsewhere
inline vf recip(vf x) {
#ifdef __AVX512F__
  const vf r = reinterpret_cast<vf>(_mm512_rcp14_ps(reinterpret_cast<__m512>(x)));
  return r * (2.0f - x * r);
#else
  return 1.0f / x;
#endif
}

// sum_c a[c] * b[c], b a row of scalars (broadcast into the lanes) or of vectors: two interleaved
// accumulator chains (half the FMA latency chain)
template <int HD, typename T>
inline vf dot(const vf* a, const T* b) {
  vf s0 = a[0] * b[0], s1 = a[1] * b[1];
  for (int c = 2; c < HD; c += 2) {
    s0 += a[c] * b[c];
    s1 += a[c + 1] * b[c + 1];
  }
  return s0 + s1;
}

struct Drop {
  bool on;
  uint32_t s0, s1, levels;
  float scale;
};

// The mask hash of element index idx: h = idx * kGolden + s0, then h ^ s1 through two xorshift-multiply
// rounds and a final xorshift; kept when the top 24 bits are below `levels`. The first step is linear in
// idx, so loops over consecutive indices advance h by a constant instead of multiplying (the same bits).
constexpr uint32_t kGolden = 0x9E3779B1u;

inline vu hash_start(vu idx, const Drop& d) { return idx * kGolden + d.s0; }

// -1 in the lanes kept by the mask, 0 elsewhere, from h = hash_start(idx)
// (only with dropout on: levels < 2^24; the top-24-bit test (x >> 8) < levels is x < levels 2^8)
inline vi keep_from(vu h, uint32_t s1, uint32_t levels) {
  vu x = h ^ s1;
  x = (x ^ (x >> 16)) * 0x7FEB352Du;
  x = (x ^ (x >> 15)) * 0x846CA68Bu;
  x = x ^ (x >> 16);
  return x < (levels << 8);
}

inline vi keep_lanes(vu idx, const Drop& d) { return keep_from(hash_start(idx, d), d.s1, d.levels); }

struct Dims {
  int64_t B, N, H, D, rs;  // rs: row stride of qkv, 3 D
  float scale;
};

// one row of a head: HD floats as one vector (xmm / ymm / zmm for HD = 4 / 8 / 16)
template <int HD>
struct RowVec {
  typedef float type __attribute__((vector_size(HD * sizeof(float))));
};

// one set's heads in row-major [H][N][HD] scratch rows (row t = h N + i), filled once per set by load_set
template <int HD>
struct Scratch {
  int64_t np;  // row stride of ds (queries x (head, key) pairs): H N rounded up, plus one vector of slack for
               // the whole-vector store of a last group that starts off a vector boundary (N < 16)
  std::vector<float> k, v, q, go, lse, rowdot, ds;
  std::vector<vf> s;
  Scratch(int64_t N, int64_t H)
      : np((H * N + 2 * L - 1) / L * L), k(H * N * HD), v(H * N * HD), q(H * N * HD), go(H * N * HD), lse(H * N),
        rowdot(H * N), ds(N * np), s(N) {}
};

// k, v and the scaled q of every head of one set (rows qkv_b, stride 3 D) into the scratch, one pass
// over the set's rows with whole-head vector copies
template <int HD>
void load_set(const float* qkv_b, const Dims& d, Scratch<HD>& sc) {
  typedef typename RowVec<HD>::type vr;
  for (int64_t j = 0; j < d.N; ++j) {
    const float* row = qkv_b + j * d.rs;
    for (int64_t h = 0; h < d.H; ++h) {
      const int64_t at = (h * d.N + j) * HD;
      vr q, k, v;
      std::memcpy(&q, row + h * HD, sizeof(vr));
      std::memcpy(&k, row + d.D + h * HD, sizeof(vr));
      std::memcpy(&v, row + 2 * d.D + h * HD, sizeof(vr));
      q *= d.scale;
      std::memcpy(&sc.q[at], &q, sizeof(vr));
      std::memcpy(&sc.k[at], &k, sizeof(vr));
      std::memcpy(&sc.v[at], &v, sizeof(vr));
    }
  }
}

// the backward's per-query inputs of every head: dout rows, rowdot = dout . out, lse
template <int HD>
void load_set_grad(const float* out_b, const float* dout_b, const float* lse_b, const Dims& d, float gscale,
                   Scratch<HD>& sc) {
  typedef typename RowVec<HD>::type vr;
  for (int64_t i = 0; i < d.N; ++i)
    for (int64_t h = 0; h < d.H; ++h) {
      vr g, o;
      std::memcpy(&g, dout_b + i * d.D + h * HD, sizeof(vr));
      std::memcpy(&o, out_b + i * d.D + h * HD, sizeof(vr));
      const vr gs = g * gscale;
      std::memcpy(&sc.go[(h * d.N + i) * HD], &gs, sizeof(vr));
      const vr t = g * o;
      float r = 0.0f;
      for (int c = 0; c < HD; ++c) r += t[c];
      sc.rowdot[h * d.N + i] = r;
    }
  std::memcpy(sc.lse.data(), lse_b, sizeof(float) * d.H * d.N);
}

// lanes l < n of columns src[(i0 + l) * HD + c] -> vectors dst[c]; other lanes 0
template <int HD>
inline void gather_cols(const float* src, int64_t i0, int n, vf* dst) {
  alignas(64) float t[HD][L];
  std::memset(t, 0, sizeof(t));
  for (int l = 0; l < n; ++l)
    for (int c = 0; c < HD; ++c) t[c][l] = src[(i0 + l) * HD + c];
  for (int c = 0; c < HD; ++c) std::memcpy(&dst[c], t[c], sizeof(vf));
}

// Lane groups. The lanes of a group are up to 16 consecutive (head, row) pairs t = h * N + i of one
// set, the scratch's row order, so a set of H heads takes ceil(H N / 16) groups instead of H ceil(N / 16)
// (25 instead of 32 for N = 50, H = 8). With N >= 16 a group holds rows of at most two heads, h1 and
// h1 + 1: lanes below `split` are h1's, and the per-head operand the inner loops broadcast (a key row
// in the forward, a query row in the backward) becomes a blend of the two heads' rows. With N < 16 a
// group stays within one head.
struct Group {
  int64_t t0, h1;
  int n, split;  // lanes in use; lanes < split belong to head h1 (split >= n: a one-head group)
};

inline Group group_at(int64_t t0, int64_t N, int64_t T) {
  const int64_t h1 = t0 / N, head_end = (h1 + 1) * N;
  int64_t n = std::min<int64_t>(L, T - t0);
  if (N < L) n = std::min(n, head_end - t0);
  return Group{t0, h1, static_cast<int>(n), static_cast<int>(std::min<int64_t>(head_end - t0, L))};
}

// lane l: the row of head h1 (lanes < split) or of head h1 + 1, broadcast
template <int HD, bool TWO>
inline void lane_rows(const float* r1, const float* r2, vi first, vf* out) {
  for (int c = 0; c < HD; ++c) out[c] = TWO ? (first ? splat(r1[c]) : splat(r2[c])) : splat(r1[c]);
}

// vectors src[c] (lanes l < g.n) -> dst[i * row_stride + col0 + h * HD + c] for (h, i) the lane's pair
template <int HD>
inline void scatter_pairs(const vf* src, float* dst, const Group& g, int64_t N, int64_t row_stride, int64_t col0) {
  alignas(64) float t[HD][L];
  for (int c = 0; c < HD; ++c) std::memcpy(t[c], &src[c], sizeof(vf));
  int64_t h = g.t0 / N, i = g.t0 - h * N;  // the first lane's pair, then stepped (no division per lane)
  for (int l = 0; l < g.n; ++l) {
    float* p = dst + i * row_stride + col0 + h * HD;
    for (int c = 0; c < HD; ++c) p[c] = t[c][l];
    if (++i == N) {
      i = 0;
      ++h;
    }
  }
}

// queries in the lanes: out rows and lse of the group's (head, query) pairs; b is the set's index in the
// batch (for the dropout hash), out_b its (N, D) output rows, lse_b its (H, N) block
template <int HD, bool TWO>
void forward_group(float* out_b, float* lse_b, const Dims& d, const Drop& dr, int64_t b, const Group& g,
                   Scratch<HD>& sc) {
  const int64_t N = d.N;
  const float *k1 = &sc.k[g.h1 * N * HD], *v1 = &sc.v[g.h1 * N * HD];
  const float *k2 = TWO ? k1 + N * HD : k1, *v2 = TWO ? v1 + N * HD : v1;
  const vi first = lane_index() < static_cast<uint32_t>(g.split);
  vf q[HD], acc[HD];
  gather_cols<HD>(sc.q.data(), g.t0, g.n, q);
  vf mx = splat(-INFINITY);
  for (int64_t j = 0; j < N; ++j) {
    vf s;
    if (TWO) {
      vf kj[HD];
      lane_rows<HD, true>(k1 + j * HD, k2 + j * HD, first, kj);
      s = dot<HD>(q, kj);
    } else {
      s = dot<HD>(q, k1 + j * HD);
    }
    sc.s[j] = s;
    mx = s > mx ? s : mx;
  }
  for (int c = 0; c < HD; ++c) acc[c] = splat(0.0f);
  vf sum = splat(0.0f);
  // hash of (lane's head and query, key j): index row + j, advanced by kGolden per key
  vu h = hash_start((lane_index() + static_cast<uint32_t>(b * d.H * N + g.t0)) * static_cast<uint32_t>(N), dr);
  const bool on = dr.on;
  const uint32_t s1 = dr.s1, levels = dr.levels;
  for (int64_t j = 0; j < N; ++j) {
    const vf e = vexp(sc.s[j] - mx);
    sum += e;
    const vf w = on ? (keep_from(h, s1, levels) ? e : splat(0.0f)) : e;
    h += kGolden;
    if (TWO) {
      vf vj[HD];
      lane_rows<HD, true>(v1 + j * HD, v2 + j * HD, first, vj);
      for (int c = 0; c < HD; ++c) acc[c] += w * vj[c];
    } else {
      for (int c = 0; c < HD; ++c) acc[c] += w * v1[j * HD + c];
    }
  }
  const vf inv = splat(dr.on ? dr.scale : 1.0f) / sum;
  for (int c = 0; c < HD; ++c) acc[c] *= inv;
  scatter_pairs<HD>(acc, out_b, g, N, d.D, 0);
  alignas(64) float lse[L];
  const vf lv = mx + vlog_ge1(sum);
  std::memcpy(lse, &lv, sizeof(vf));
  for (int l = 0; l < g.n; ++l) lse_b[g.t0 + l] = lse[l];
}

// keys in the lanes, one pass over the queries: dk, dv of the group's (head, key) pairs in registers,
// dS kept (queries x pairs) for dq; dqkv_b: the set's (N, 3 D) gradient rows
template <int HD, bool TWO>
void backward_group(float* dqkv_b, const Dims& d, const Drop& dr, int64_t b, const Group& g, Scratch<HD>& sc) {
  const int64_t N = d.N, NP = sc.np;
  const int64_t o1 = g.h1 * N, o2 = TWO ? o1 + N : o1;  // first row of each head
  const vi first = lane_index() < static_cast<uint32_t>(g.split);
  vf k[HD], v[HD], dk[HD], dv[HD];
  gather_cols<HD>(sc.k.data(), g.t0, g.n, k);
  gather_cols<HD>(sc.v.data(), g.t0, g.n, v);
  for (int c = 0; c < HD; ++c) dk[c] = dv[c] = splat(0.0f);
  // hash index of (head h, query i, key j) is ((b H + h) N + i) N + j: per lane ((b H + h) N) N + j, plus i N
  const uint32_t bh1 = static_cast<uint32_t>(b * d.H + g.h1), NN = static_cast<uint32_t>(N * N);
  const vu col1 = lane_index() + (bh1 * NN + static_cast<uint32_t>(g.t0 - o1));
  const vu col2 = lane_index() + ((bh1 + 1) * NN + static_cast<uint32_t>(g.t0 - o1 - N));
  // the hash of (query i, the lane's key): index col + i N, advanced by N kGolden per query
  vu h = hash_start(TWO ? (first ? col1 : col2) : col1, dr);
  const uint32_t step = static_cast<uint32_t>(N) * kGolden, s1 = dr.s1, levels = dr.levels;
  const bool on = dr.on;
  for (int64_t i = 0; i < N; ++i) {
    vf qi[HD], gi[HD];
    lane_rows<HD, TWO>(&sc.q[(o1 + i) * HD], &sc.q[(o2 + i) * HD], first, qi);
    lane_rows<HD, TWO>(&sc.go[(o1 + i) * HD], &sc.go[(o2 + i) * HD], first, gi);
    const vf lse = TWO ? (first ? splat(sc.lse[o1 + i]) : splat(sc.lse[o2 + i])) : splat(sc.lse[o1 + i]);
    const vf rowdot = TWO ? (first ? splat(sc.rowdot[o1 + i]) : splat(sc.rowdot[o2 + i])) : splat(sc.rowdot[o1 + i]);
    const vf s = dot<HD>(k, qi);
    const vf da = dot<HD>(v, gi);
    const vf p = vexp(s - lse);
    vf a = p;
    vf dp = da;
    if (on) {
      const vi keep = keep_from(h, s1, levels);
      a = keep ? a : splat(0.0f);
      dp = keep ? dp : splat(0.0f);
    }
    h += step;
    const vf ds = p * (dp - rowdot);
    std::memcpy(&sc.ds[i * NP + g.t0], &ds, sizeof(vf));  // lanes past the set's pairs hold junk, never read
    for (int c = 0; c < HD; ++c) {
      dv[c] += a * gi[c];
      dk[c] += ds * qi[c];
    }
  }
  scatter_pairs<HD>(dk, dqkv_b, g, N, d.rs, d.D);
  scatter_pairs<HD>(dv, dqkv_b, g, N, d.rs, 2 * d.D);
}

// dq of head h = scale * dS k: rows of HD floats, four query rows at a time (independent accumulator chains)
template <int HD>
void backward_dq(float* dqkv_b, const Dims& d, int64_t h, const Scratch<HD>& sc) {
  typedef typename RowVec<HD>::type vr;
  const int64_t N = d.N, NP = sc.np;
  const float* kh = &sc.k[h * N * HD];
  const float* ds = &sc.ds[h * N];
  for (int64_t i = 0; i < N; i += 4) {
    const int rows = static_cast<int>(N - i < 4 ? N - i : 4);
    vr acc[4] = {};
    for (int64_t j = 0; j < N; ++j) {
      vr kj;
      std::memcpy(&kj, kh + j * HD, sizeof(vr));
      for (int r = 0; r < 4; ++r) acc[r] += ds[(i + (r < rows ? r : 0)) * NP + j] * kj;
    }
    for (int r = 0; r < rows; ++r) {
      const vr o = acc[r] * d.scale;
      std::memcpy(dqkv_b + (i + r) * d.rs + h * HD, &o, sizeof(vr));
    }
  }
}

// all heads of set b: the set's rows are loaded once (load_set), then the lane groups run from the scratch
template <int HD>
void attention_set_forward(const float* qkv_b, float* out_b, float* lse_b, const Dims& d, const Drop& dr, int64_t b,
                           Scratch<HD>& sc) {
  load_set<HD>(qkv_b, d, sc);
  const int64_t T = d.H * d.N;
  for (int64_t t0 = 0; t0 < T;) {
    const Group g = group_at(t0, d.N, T);
    if (g.split < g.n)
      forward_group<HD, true>(out_b, lse_b, d, dr, b, g, sc);
    else
      forward_group<HD, false>(out_b, lse_b, d, dr, b, g, sc);
    t0 += g.n;
  }
}

template <int HD>
void attention_set_backward(const float* qkv_b, const float* out_b, const float* dout_b, const float* lse_b,
                            float* dqkv_b, const Dims& d, const Drop& dr, int64_t b, Scratch<HD>& sc) {
  load_set<HD>(qkv_b, d, sc);
  load_set_grad<HD>(out_b, dout_b, lse_b, d, dr.on ? dr.scale : 1.0f, sc);
  const int64_t T = d.H * d.N;
  for (int64_t t0 = 0; t0 < T;) {
    const Group g = group_at(t0, d.N, T);
    if (g.split < g.n)
      backward_group<HD, true>(dqkv_b, d, dr, b, g, sc);
    else
      backward_group<HD, false>(dqkv_b, d, dr, b, g, sc);
    t0 += g.n;
  }
  for (int64_t h = 0; h < d.H; ++h) backward_dq<HD>(dqkv_b, d, h, sc);
}

Drop make_drop(int32_t s0, int32_t s1, int64_t levels) {
  Drop dr;
  dr.on = levels < (int64_t{1} << 24);
  dr.s0 = static_cast<uint32_t>(s0);
  dr.s1 = static_cast<uint32_t>(s1);
  dr.levels = static_cast<uint32_t>(levels < 0 ? 0 : levels);
  dr.scale = dr.on ? static_cast<float>(16777216.0 / static_cast<double>(levels)) : 1.0f;
  return dr;
}

// the masks of `sites` dropout sites from their (sites, 2) seed words (at least one entry)
std::vector<Drop> make_drops(const int32_t* seeds, int64_t sites, int64_t levels) {
  std::vector<Drop> dr(std::max<int64_t>(sites, 1));
  for (int64_t k = 0; k < sites; ++k) dr[k] = make_drop(seeds[2 * k], seeds[2 * k + 1], levels);
  return dr;
}

// the head dimension D / H, or 0 when H does not divide D
inline int64_t head_dim(int64_t D, int64_t H) { return H > 0 && D % H == 0 ? D / H : 0; }

template <int HD>
void forward_all(const float* qkv, float* out, float* lse, const Dims& d, const Drop& dr, int threads) {
#pragma omp parallel num_threads(threads)
  {
    Scratch<HD> sc(d.N, d.H);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < d.B; ++b)
      attention_set_forward<HD>(qkv + b * d.N * d.rs, out + b * d.N * d.D, lse + b * d.H * d.N, d, dr, b, sc);
  }
}

template <int HD>
void backward_all(const float* qkv, const float* out, const float* dout, const float* lse, float* dqkv, const Dims& d,
                  const Drop& dr, int threads) {
#pragma omp parallel num_threads(threads)
  {
    Scratch<HD> sc(d.N, d.H);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < d.B; ++b)
      attention_set_backward<HD>(qkv + b * d.N * d.rs, out + b * d.N * d.D, dout + b * d.N * d.D,
                                 lse + b * d.H * d.N, dqkv + b * d.N * d.rs, d, dr, b, sc);
  }
}

// ----------------------------------------------------------------------------------------------
// bias + GELU + hash dropout over the rows of a (M, F) tensor (the feed-forward hidden layer):
//     out = M_hash(i) * gelu(u + b),  gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)),
// with i = m * F + f the row-major index, as hash_keep_mask gives it for the (B, N, F) tensor.
// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, the formula PyTorch's vectorised erf uses);
// its exp(-x^2 / 2) is also the normal density that GELU's derivative needs.

struct GeluParts {
  vf cdf, pdf_x;  // Phi(x) and x * phi(x)
};

inline GeluParts gelu_parts(vf x) {
  const vf z = x * 0.70710678118654752f;
  const vu sign = reinterpret_cast<vu>(z) & 0x80000000u;
  const vf az = reinterpret_cast<vf>(reinterpret_cast<vu>(z) ^ sign);  // |z|
  const vf t = recip(az * 0.3275911f + 1.0f);
  vf poly = t * 1.061405429f - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  poly = poly * t;
  const vf e = vexp(-(z * z));  // exp(-x^2 / 2)
  const vf erf_abs = 1.0f - poly * e;
  const vf erf = reinterpret_cast<vf>(reinterpret_cast<vu>(erf_abs) ^ sign);  // erf is odd
  return GeluParts{erf * 0.5f + 0.5f, x * e * 0.39894228040143268f};
}

void gelu_forward_rows(const float* u, const float* bias, float* out, int64_t M, int64_t F, const Drop& dr,
                       int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    const vu base = lane_index() + static_cast<uint32_t>(m * F);
    for (int64_t f = 0; f < F; f += L) {
      vf x, b;
      std::memcpy(&x, u + m * F + f, sizeof(vf));
      std::memcpy(&b, bias + f, sizeof(vf));
      x += b;
      vf y = x * gelu_parts(x).cdf;
      if (dr.on) y = keep_lanes(base + static_cast<uint32_t>(f), dr) ? y * dr.scale : splat(0.0f);
      std::memcpy(out + m * F + f, &y, sizeof(vf));
    }
  }
}

void gelu_backward_rows(const float* grad, const float* u, const float* bias, float* du, float* dbias, int64_t M,
                        int64_t F, const Drop& dr, int threads) {
  const int nt = threads < 1 ? 1 : threads;
  std::vector<float> partial(static_cast<size_t>(nt) * F, 0.0f);
#pragma omp parallel num_threads(nt)
  {
    float* acc = partial.data() + static_cast<int64_t>(omp_get_thread_num()) * F;
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const vu base = lane_index() + static_cast<uint32_t>(m * F);
      for (int64_t f = 0; f < F; f += L) {
        vf x, b, g, a;
        std::memcpy(&x, u + m * F + f, sizeof(vf));
        std::memcpy(&b, bias + f, sizeof(vf));
        std::memcpy(&g, grad + m * F + f, sizeof(vf));
        x += b;
        const GeluParts gp = gelu_parts(x);
        vf d = g * (gp.cdf + gp.pdf_x);
        if (dr.on) d = keep_lanes(base + static_cast<uint32_t>(f), dr) ? d * dr.scale : splat(0.0f);
        std::memcpy(du + m * F + f, &d, sizeof(vf));
        std::memcpy(&a, acc + f, sizeof(vf));
        a += d;
        std::memcpy(acc + f, &a, sizeof(vf));
      }
    }
  }
  for (int64_t f = 0; f < F; ++f) {
    float sum = 0.0f;
    for (int t = 0; t < nt; ++t) sum += partial[static_cast<size_t>(t) * F + f];
    dbias[f] = sum;
  }
}


// ----------------------------------------------------------------------------------------------
// A whole pre-norm transformer block (setflow.nn.fused.block_core with hash dropout), forward and
// backward, over chunks of whole sets: each thread takes a few sets (a few hundred rows) at a time
// and runs every stage of the block on them while they sit in its L2 cache, calling the BLAS sgemm
// single-threaded for the linear maps. Done layer by layer over the whole batch, the (B, N, F)
// feed-forward activations make ~11 round trips through memory per block; here they make one (the
// pre-activation u, saved for the backward).
//
// Block (rows x of width D, feed-forward width F, heads H of width HD):
//     a = LN1(x);  qkv = a Wqkv^T + bqkv;  o = attention(qkv);  h1 = x + M1 (o Wo^T + bo)
//     f = LN2(h1); u = f W1^T;  g = M2 gelu(u + b1);  out = h1 + M3 (g W2^T + b2)
// with M1, M2, M3 the hash masks of dropout sites 1-3 (setflow.nn.fused.hash_keep_mask of the
// (B, N, D) / (B, N, F) tensors) and the attention's own site 0. Saved for the backward: qkv, o, the
// attention's log-sum-exp, h1, u and the LayerNorm statistics; a and f are recomputed from x and h1.

typedef void (*sgemm_fn)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);
typedef int (*blas_threads_fn)(int);
sgemm_fn g_sgemm = nullptr;
blas_threads_fn g_blas_local_threads = nullptr;

// row-major C (M x N) = op(A) op(B) + beta C, op(X) = X^T when the flag is set. A column-major sgemm
// sees each row-major matrix transposed, so it computes C^T = op(B)^T op(A)^T.
void gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float beta, float* C,
          int ldc) {
  const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
  const float one = 1.0f;
  g_sgemm(&opa, &opb, &N, &M, &K, &one, B, &ldb, A, &lda, &beta, C, &ldc);
}

inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}
inline void storev(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }
// the sum of the lanes by a tree of halvings (log2 16 = 4 dependent adds rather than 16 in a row)
inline float hsum(vf v) {
#ifdef __AVX512F__
  return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v));
#else
  float s[L];
  std::memcpy(s, &v, sizeof(vf));
  for (int w = L / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) s[l] += s[l + w];
  return s[0];
#endif
}
// the dropout mask over consecutive elements idx0, idx0 + 1, ..., 16 at a time (the block's row-major
// activations, whose mask index is the row-major element index)
class MaskRun {
 public:
  MaskRun(int64_t idx0, const Drop& d)
      : h_(hash_start(lane_index() + static_cast<uint32_t>(idx0), d)), s1_(d.s1), levels_(d.levels), scale_(d.scale),
        on_(d.on) {}
  bool on() const { return on_; }
  // the keep lanes of the next 16 elements
  vi next() {
    const vi k = keep_from(h_, s1_, levels_);
    h_ += 16 * kGolden;
    return k;
  }
  vf apply(vi keep, vf x) const { return keep ? x * scale_ : splat(0.0f); }
  // x times the next 16 elements' mask (x itself without dropout)
  vf apply(vf x) { return on_ ? apply(next(), x) : x; }

 private:
  vu h_;
  uint32_t s1_, levels_;
  float scale_;
  bool on_;
};

struct BlockShape {
  int64_t B, N, D, H, F;
  float eps;
};

struct BlockWeights {  // setflow.nn.fused.block_core order
  const float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b, *ln2_w, *ln2_b, *ff1_w, *ff1_b, *ff2_w, *ff2_b;
};

// y = LN(x) rows (R, D); mean / rstd per row
void ln_rows(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd, int64_t R, int64_t D,
             float eps) {
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = x + r * D;
    vf s = splat(0.0f);
    for (int64_t c = 0; c < D; c += L) s += loadv(xr + c);
    const float mu = hsum(s) / static_cast<float>(D);
    vf s2 = splat(0.0f);
    for (int64_t c = 0; c < D; c += L) {
      const vf t = loadv(xr + c) - mu;
      s2 += t * t;
    }
    const float rs = 1.0f / std::sqrt(hsum(s2) / static_cast<float>(D) + eps);
    for (int64_t c = 0; c < D; c += L) storev(y + r * D + c, (loadv(xr + c) - mu) * rs * loadv(w + c) + loadv(b + c));
    mean[r] = mu;
    rstd[r] = rs;
  }
}

// y = LN(x) from saved statistics
void ln_apply(const float* x, const float* w, const float* b, const float* mean, const float* rstd, float* y,
              int64_t R, int64_t D) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < D; c += L)
      storev(y + r * D + c, (loadv(x + r * D + c) - mean[r]) * rstd[r] * loadv(w + c) + loadv(b + c));
}

// dx = res + LN backward of dy (rows (R, D); res null: none); dw += sum dy * xhat, db += sum dy
void ln_backward(const float* x, const float* w, const float* mean, const float* rstd, const float* dy,
                 const float* res, float* dx, float* dw, float* db, int64_t R, int64_t D) {
  const float inv_d = 1.0f / static_cast<float>(D);
  for (int64_t r = 0; r < R; ++r) {
    const float mu = mean[r], rs = rstd[r];
    vf s1 = splat(0.0f), s2 = splat(0.0f);
    for (int64_t c = 0; c < D; c += L) {
      const vf g = loadv(dy + r * D + c);
      const vf xh = (loadv(x + r * D + c) - mu) * rs;
      const vf gw = g * loadv(w + c);
      s1 += gw;
      s2 += gw * xh;
      storev(dw + c, loadv(dw + c) + g * xh);
      storev(db + c, loadv(db + c) + g);
    }
    const float m1 = hsum(s1) * inv_d, m2 = hsum(s2) * inv_d;
    for (int64_t c = 0; c < D; c += L) {
      const vf xh = (loadv(x + r * D + c) - mu) * rs;
      const vf gw = loadv(dy + r * D + c) * loadv(w + c);
      const vf d = (gw - m1 - xh * m2) * rs;
      storev(dx + r * D + c, res ? loadv(res + r * D + c) + d : d);
    }
  }
}

inline void add_bias_rows(float* y, const float* b, int64_t R, int64_t C) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; c += L) storev(y + r * C + c, loadv(y + r * C + c) + loadv(b + c));
}

inline void colsum_acc(const float* y, float* acc, int64_t R, int64_t C) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; c += L) storev(acc + c, loadv(acc + c) + loadv(y + r * C + c));
}

// out = res + M (y + b), rows (R, C) starting at global row r0 (the mask index is (r0 + r) * C + c)
void residual_dropout(const float* res, const float* y, const float* b, float* out, int64_t R, int64_t C, int64_t r0,
                      const Drop& dr) {
  MaskRun mask(r0 * C, dr);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; c += L)
      storev(out + r * C + c, loadv(res + r * C + c) + mask.apply(loadv(y + r * C + c) + loadv(b + c)));
}

template <int HD>
struct BlockScratch {
  std::vector<float> a, qkv, o, lse, h1, f, u, g, y, stats, dqkv, d1, d2, d3;
  Scratch<HD> att;
  // keep: the saved activations live in the caller's tensors (no scratch for qkv, lse, h1, u, stats);
  // o is scratch in any case (the backward's dO)
  BlockScratch(int64_t rows, int64_t sets, const BlockShape& s, bool bwd, bool keep)
      : a(rows * s.D), qkv(keep ? 0 : rows * 3 * s.D), o(rows * s.D), lse(keep ? 0 : sets * s.H * s.N),
        h1(keep ? 0 : rows * s.D), f(rows * s.D), u(keep ? 0 : rows * s.F), g(rows * s.F), y(rows * s.D),
        stats(keep ? 0 : 4 * rows), dqkv(bwd ? rows * 3 * s.D : 0), d1(bwd ? rows * s.D : 0),
        d2(bwd ? rows * s.D : 0), d3(bwd ? rows * s.F : 0), att(s.N, s.H) {}
};

struct Saved {  // (B, N, 3D), (B, N, D), (B, H, N), (B, N, D), (B, N, F), (4, B * N): null when not saved
  float *qkv, *o, *lse, *h1, *u, *stats;
};

int64_t sets_per_chunk(const BlockShape& s, int threads) {
  // ~200-400 rows (the chunk's activations then fit in L2), and at least four chunks per thread
  // so that dynamic scheduling can even out cores of unequal speed
  const int64_t c = std::max<int64_t>(1, 256 / std::max<int64_t>(1, s.N));
  const int64_t per_thread = (s.B + 4 * threads - 1) / (4 * threads);
  return std::max<int64_t>(1, std::min(c, per_thread));
}

// One chunk of the block forward: sets b0 .. b0 + nb - 1 of the batch (rows r0 = b0 N ..), xc / outc the
// chunk's input and output rows. sv: the saved tensors of the whole batch, or all null (nothing kept: the
// scratch holds the intermediates).
template <int HD>
void block_chunk_forward(const float* xc, const BlockWeights& w, float* outc, const Saved& sv, const BlockShape& s,
                         const Drop* dr, int64_t b0, int64_t nb, BlockScratch<HD>& sc) {
  const int64_t N = s.N, D = s.D, F = s.F, H = s.H, rows_total = s.B * N, R = nb * N, r0 = b0 * N;
  const Dims ad{s.B, N, H, D, 3 * D, static_cast<float>(1.0 / std::sqrt(static_cast<double>(HD)))};
  const bool keep = sv.qkv != nullptr;
  float* qkv = keep ? sv.qkv + r0 * 3 * D : sc.qkv.data();
  float* o = keep ? sv.o + r0 * D : sc.o.data();
  float* lse = keep ? sv.lse + b0 * H * N : sc.lse.data();
  float* h1 = keep ? sv.h1 + r0 * D : sc.h1.data();
  float* u = keep ? sv.u + r0 * F : sc.u.data();
  float* st[4];
  for (int k = 0; k < 4; ++k) st[k] = keep ? sv.stats + k * rows_total + r0 : sc.stats.data() + k * R;
  ln_rows(xc, w.ln1_w, w.ln1_b, sc.a.data(), st[0], st[1], R, D, s.eps);
  gemm(false, true, R, 3 * D, D, sc.a.data(), D, w.qkv_w, D, 0.0f, qkv, 3 * D);
  add_bias_rows(qkv, w.qkv_b, R, 3 * D);
  for (int64_t bi = 0; bi < nb; ++bi)
    attention_set_forward<HD>(qkv + bi * N * 3 * D, o + bi * N * D, lse + bi * H * N, ad, dr[0], b0 + bi, sc.att);
  gemm(false, true, R, D, D, o, D, w.proj_w, D, 0.0f, sc.y.data(), D);
  residual_dropout(xc, sc.y.data(), w.proj_b, h1, R, D, r0, dr[1]);
  ln_rows(h1, w.ln2_w, w.ln2_b, sc.f.data(), st[2], st[3], R, D, s.eps);
  gemm(false, true, R, F, D, sc.f.data(), D, w.ff1_w, D, 0.0f, u, F);
  MaskRun mask(r0 * F, dr[2]);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < F; c += L) {
      const vf z = loadv(u + r * F + c) + loadv(w.ff1_b + c);
      storev(sc.g.data() + r * F + c, mask.apply(z * gelu_parts(z).cdf));
    }
  gemm(false, true, R, D, F, sc.g.data(), F, w.ff2_w, F, 0.0f, sc.y.data(), D);
  residual_dropout(h1, sc.y.data(), w.ff2_b, outc, R, D, r0, dr[3]);
}

template <int HD>
void block_forward_all(const float* x, const BlockWeights& w, float* out, const Saved& sv, const BlockShape& s,
                       const Drop* dr, int threads) {
  const int64_t cs = sets_per_chunk(s, threads), chunks = (s.B + cs - 1) / cs;
  const bool keep = sv.qkv && sv.o && sv.lse && sv.h1 && sv.u && sv.stats;  // else nothing is saved
  const Saved none{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
#pragma omp parallel num_threads(threads)
  {
    const int prev = g_blas_local_threads ? g_blas_local_threads(1) : 0;
    BlockScratch<HD> sc(cs * s.N, cs, s, false, keep);
#pragma omp for schedule(dynamic, 1)  // a busy core takes fewer chunks
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t b0 = ch * cs, nb = std::min(cs, s.B - b0), r0 = b0 * s.N;
      block_chunk_forward<HD>(x + r0 * s.D, w, out + r0 * s.D, keep ? sv : none, s, dr, b0, nb, sc);
    }
    if (g_blas_local_threads) g_blas_local_threads(prev);
  }
}

// chunks whose weight-gradient partial sums are kept at once (~200 KB each at the paper widths)
constexpr int64_t kMergeWave = 64;

// weight gradients in block_core order: offsets of the 12 tensors in one chunk's partial-sum buffer
struct GradLayout {
  int64_t off[12], size[12], total;
  explicit GradLayout(const BlockShape& s) {
    const int64_t D = s.D, F = s.F;
    const int64_t sz[12] = {D, D, 3 * D * D, 3 * D, D * D, D, D, D, F * D, F, D * F, D};
    total = 0;
    for (int k = 0; k < 12; ++k) {
      off[k] = total;
      size[k] = sz[k];
      total += (sz[k] + L - 1) / L * L;  // whole vectors apart
    }
  }
};

// Deterministic parameter gradients under dynamic scheduling: each chunk writes its own partial sums
// (`size` floats), and the partials are added into `total` strictly in chunk order, by whichever thread
// completes the next chunk in line. No thread waits for another's work, a partial is usually merged
// while still in cache, and the result does not depend on which thread ran which chunk. Chunks run in
// waves of at most kMergeWave (the caller's loop over waves, each an omp for with its closing barrier),
// whose slots the next wave reuses: memory stays bounded for any batch size.
class OrderedMerge {
 public:
  OrderedMerge(int64_t chunks, int64_t size)
      : chunks_(chunks), size_(size), wave_(std::max<int64_t>(1, std::min(chunks, kMergeWave))),
        parts_(new float[static_cast<size_t>(wave_) * size]), total_(size, 0.0f), done_(chunks, 0) {
    omp_init_lock(&lock_);
  }
  ~OrderedMerge() { omp_destroy_lock(&lock_); }
  int64_t wave() const { return wave_; }
  float* slot(int64_t ch) { return parts_.get() + (ch % wave_) * size_; }
  // chunk ch's partials are complete: merge every chunk now in line
  void done(int64_t ch) {
    omp_set_lock(&lock_);
    done_[ch] = 1;
    for (; next_ < chunks_ && done_[next_]; ++next_) {
      const float* part = slot(next_);
      for (int64_t i = 0; i < size_; ++i) total_[i] += part[i];
    }
    omp_unset_lock(&lock_);
  }
  const float* total() const { return total_.data(); }

 private:
  int64_t chunks_, size_, wave_, next_ = 0;
  std::unique_ptr<float[]> parts_;
  std::vector<float> total_;
  std::vector<char> done_;
  omp_lock_t lock_;
};

// One chunk of the block backward (rows as in block_chunk_forward): goc / xc / dxc the chunk's output
// gradient, input and input gradient rows; gw the chunk's 12 weight-gradient slots (overwritten).
template <int HD>
void block_chunk_backward(const float* goc, const float* xc, const BlockWeights& w, const Saved& sv, float* dxc,
                          float* const* gw, const GradLayout& gl, const BlockShape& s, const Drop* dr, int64_t b0,
                          int64_t nb, BlockScratch<HD>& sc) {
  const int64_t N = s.N, D = s.D, F = s.F, H = s.H, rows_total = s.B * N, R = nb * N, r0 = b0 * N;
  const Dims ad{s.B, N, H, D, 3 * D, static_cast<float>(1.0 / std::sqrt(static_cast<double>(HD)))};
  for (int k : {0, 1, 3, 5, 6, 7, 9, 11}) std::memset(gw[k], 0, sizeof(float) * gl.size[k]);  // summed into
  const float* go = goc;
  const float* qkv = sv.qkv + r0 * 3 * D;
  const float* o = sv.o + r0 * D;
  const float* lse = sv.lse + b0 * H * N;
  const float* h1 = sv.h1 + r0 * D;
  const float* u = sv.u + r0 * F;
  const float* st[4];
  for (int k = 0; k < 4; ++k) st[k] = sv.stats + k * rows_total + r0;
  float* dz = sc.d1.data();   // (R, D): grad of the feed-forward branch output, then of the attention branch
  float* dh1 = sc.d2.data();  // (R, D)
  float* dg = sc.d3.data();   // (R, F): grad of g, then of u
  float* g = sc.g.data();
  // feed-forward branch: out = h1 + M3 (g W2^T + b2)
  MaskRun mask3(r0 * D, dr[3]);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < D; c += L) storev(dz + r * D + c, mask3.apply(loadv(go + r * D + c)));
  colsum_acc(dz, gw[11], R, D);
  gemm(false, false, R, F, D, dz, D, w.ff2_w, F, 0.0f, dg, F);
  MaskRun mask2(r0 * F, dr[2]);
  for (int64_t r = 0; r < R; ++r)  // g and du from u in one pass
    for (int64_t c = 0; c < F; c += L) {
      const vf z = loadv(u + r * F + c) + loadv(w.ff1_b + c);
      const GeluParts gp = gelu_parts(z);
      vf gv = z * gp.cdf, dv = loadv(dg + r * F + c) * (gp.cdf + gp.pdf_x);
      if (mask2.on()) {
        const vi keep = mask2.next();
        gv = mask2.apply(keep, gv);
        dv = mask2.apply(keep, dv);
      }
      storev(g + r * F + c, gv);
      storev(dg + r * F + c, dv);
    }
  gemm(true, false, D, F, R, dz, D, g, F, 0.0f, gw[10], F);
  colsum_acc(dg, gw[9], R, F);
  ln_apply(h1, w.ln2_w, w.ln2_b, st[2], st[3], sc.f.data(), R, D);
  gemm(true, false, F, D, R, dg, F, sc.f.data(), D, 0.0f, gw[8], D);
  gemm(false, false, R, D, F, dg, F, w.ff1_w, D, 0.0f, sc.y.data(), D);  // df
  ln_backward(h1, w.ln2_w, st[2], st[3], sc.y.data(), go, dh1, gw[6], gw[7], R, D);
  // attention branch: h1 = x + M1 (o Wo^T + bo)
  MaskRun mask1(r0 * D, dr[1]);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < D; c += L) storev(dz + r * D + c, mask1.apply(loadv(dh1 + r * D + c)));
  colsum_acc(dz, gw[5], R, D);
  gemm(true, false, D, D, R, dz, D, o, D, 0.0f, gw[4], D);
  float* dov = sc.o.data();
  gemm(false, false, R, D, D, dz, D, w.proj_w, D, 0.0f, dov, D);
  float* dqkv = sc.dqkv.data();
  for (int64_t bi = 0; bi < nb; ++bi)
    attention_set_backward<HD>(qkv + bi * N * 3 * D, o + bi * N * D, dov + bi * N * D, lse + bi * H * N,
                               dqkv + bi * N * 3 * D, ad, dr[0], b0 + bi, sc.att);
  colsum_acc(dqkv, gw[3], R, 3 * D);
  ln_apply(xc, w.ln1_w, w.ln1_b, st[0], st[1], sc.a.data(), R, D);
  gemm(true, false, 3 * D, D, R, dqkv, 3 * D, sc.a.data(), D, 0.0f, gw[2], D);
  gemm(false, false, R, D, 3 * D, dqkv, 3 * D, w.qkv_w, D, 0.0f, sc.y.data(), D);  // da
  ln_backward(xc, w.ln1_w, st[0], st[1], sc.y.data(), dh1, dxc, gw[0], gw[1], R, D);
}

template <int HD>
void block_backward_all(const float* dout, const float* x, const BlockWeights& w, const Saved& sv, float* dx,
                        float* const* dw, const BlockShape& s, const Drop* dr, int threads) {
  const int64_t cs = sets_per_chunk(s, threads), chunks = (s.B + cs - 1) / cs;
  const GradLayout gl(s);
  const int nt = threads < 1 ? 1 : threads;
  OrderedMerge merge(chunks, gl.total);
#pragma omp parallel num_threads(nt)
  {
    const int prev = g_blas_local_threads ? g_blas_local_threads(1) : 0;
    BlockScratch<HD> sc(cs * s.N, cs, s, true, true);
    for (int64_t w0 = 0; w0 < chunks; w0 += merge.wave()) {
      const int64_t w1 = std::min(chunks, w0 + merge.wave());
#pragma omp for schedule(dynamic, 1)  // a busy core takes fewer chunks
      for (int64_t ch = w0; ch < w1; ++ch) {
        float* gw[12];
        for (int k = 0; k < 12; ++k) gw[k] = merge.slot(ch) + gl.off[k];
        const int64_t b0 = ch * cs, nb = std::min(cs, s.B - b0), r0 = b0 * s.N;
        block_chunk_backward<HD>(dout + r0 * s.D, x + r0 * s.D, w, sv, dx + r0 * s.D, gw, gl, s, dr, b0, nb, sc);
        merge.done(ch);
      }  // the implicit barrier: this wave is merged, its slots free
    }
    if (g_blas_local_threads) g_blas_local_threads(prev);
  }
  for (int k = 0; k < 12; ++k) std::memcpy(dw[k], merge.total() + gl.off[k], sizeof(float) * gl.size[k]);
}

BlockWeights unpack_weights(const float* const* w) {
  return BlockWeights{w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11]};
}

// 0 ok, 1 unsupported shape (head dim not 4 / 8 / 16, D or F not a multiple of 16), 2 no sgemm registered
int block_check(const BlockShape& s, int64_t HD) {
  if (!g_sgemm) return 2;
  if (s.D % L || s.F % L || (HD != 4 && HD != 8 && HD != 16)) return 1;
  return 0;
}

// ----------------------------------------------------------------------------------------------
// A whole set transformer (setflow.nn.SetTransformer without a context input) in one call per direction:
//     h_0 = x We^T + be (+ pos[n]);  h_{l+1} = block_l(h_l) for l < Lb;  y = LN(h_Lb) Wo^T + bo
// Each chunk of sets runs through the input layer, every block and the read-out while it is in a core's
// cache. Layer by layer, the skinny input and read-out layers (K and O of 1-4) were PyTorch GEMMs,
// LayerNorms and adds, each a pass through the (B N, D) activations in memory, and every block boundary
// was a round trip through memory and the autograd engine. Saved for the backward (one float buffer,
// layout NetLayout): each block's input and its block_chunk_forward tensors, the read-out's input and
// its LayerNorm statistics. The input layer's output is recomputed from x, never kept apart.

struct NetShape {
  int64_t B, N, K, D, H, F, O, Lb;
  float eps, norm_eps;
  BlockShape block() const { return BlockShape{B, N, D, H, F, eps}; }
};

struct NetLayout {
  int64_t M, off_qkv, off_o, off_lse, off_h1, off_u, off_st, per_block, off_hl, off_hs, total;
  explicit NetLayout(const NetShape& s) : M(s.B * s.N) {
    off_qkv = M * s.D;  // each block's input h_l first
    off_o = off_qkv + 3 * M * s.D;
    off_lse = off_o + M * s.D;
    off_h1 = off_lse + s.B * s.H * s.N;
    off_u = off_h1 + M * s.D;
    off_st = off_u + M * s.F;
    per_block = off_st + 4 * M;
    off_hl = s.Lb * per_block;
    off_hs = off_hl + M * s.D;
    total = off_hs + 2 * M;
  }
  float* input(float* base, int64_t l) const { return base + l * per_block; }
  Saved block(float* base, int64_t l) const {
    float* b = base + l * per_block;
    return Saved{b + off_qkv, b + off_o, b + off_lse, b + off_h1, b + off_u, b + off_st};
  }
};

// a chunk's parameter-gradient partial sums: input layer (We^T, be, pos), the blocks, the read-out
struct NetGradLayout {
  GradLayout gl;
  int64_t we, be, pos, blocks, wo, bo, nw, nb, total;
  NetGradLayout(const NetShape& s, bool has_pos) : gl(s.block()) {
    auto vec = [](int64_t n) { return (n + L - 1) / L * L; };
    we = 0;
    be = we + vec(s.K * s.D);
    pos = be + vec(s.D);
    blocks = pos + (has_pos ? vec(s.N * s.D) : 0);
    wo = blocks + s.Lb * gl.total;
    bo = wo + vec(s.O * s.D);
    nw = bo + vec(s.O);
    nb = nw + vec(s.D);
    total = nb + vec(s.D);
  }
};

struct NetWeights {
  const float *we, *be, *pos;
  std::vector<BlockWeights> blocks;
  const float *nw, *nb, *wo, *bo;
};

// a (rows, cols) row-major matrix transposed (cols, rows)
std::vector<float> transposed(const float* a, int64_t rows, int64_t cols) {
  std::vector<float> t(rows * cols);
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) t[c * rows + r] = a[r * cols + c];
  return t;
}

// rows h = x We^T + be (+ pos[r mod N]) of one chunk (its first row starts a set); weT: We transposed (K, D)
void embed_rows(const float* x, const float* weT, const float* be, const float* pos, float* h, int64_t R, int64_t N,
                int64_t K, int64_t D) {
  for (int64_t r = 0; r < R; ++r) {
    const float* pr = pos ? pos + (r % N) * D : nullptr;
    for (int64_t c = 0; c < D; c += L) {
      vf acc = loadv(be + c);
      if (pr) acc += loadv(pr + c);
      for (int64_t k = 0; k < K; ++k) acc += x[r * K + k] * loadv(weT + k * D + c);
      storev(h + r * D + c, acc);
    }
  }
}

template <int HD>
struct NetScratch {
  BlockScratch<HD> blk;
  std::vector<float> h0, h1, a;  // ping-pong rows (activations forward, gradients backward), read-out rows
  NetScratch(int64_t rows, int64_t sets, const NetShape& s, bool bwd, bool keep)
      : blk(rows, sets, s.block(), bwd, keep), h0(rows * s.D), h1(rows * s.D), a(rows * s.D) {}
};

template <int HD>
void network_forward_all(const float* x, const NetWeights& w, float* y, float* saved, const NetShape& s,
                         const Drop* dr, int threads) {
  const BlockShape bs = s.block();
  const NetLayout lay(s);
  const int64_t N = s.N, D = s.D, K = s.K, O = s.O, M = lay.M;
  const int64_t cs = sets_per_chunk(bs, threads), chunks = (s.B + cs - 1) / cs;
  const bool keep = saved != nullptr;
  const Saved none{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  const std::vector<float> weT = transposed(w.we, D, K);
#pragma omp parallel num_threads(threads)
  {
    const int prev = g_blas_local_threads ? g_blas_local_threads(1) : 0;
    NetScratch<HD> sc(cs * N, cs, s, false, keep);
    std::vector<float> st(2 * cs * N);
#pragma omp for schedule(dynamic, 1)  // a busy core takes fewer chunks
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t b0 = ch * cs, nb = std::min(cs, s.B - b0), R = nb * N, r0 = b0 * N;
      float* buf[2] = {sc.h0.data(), sc.h1.data()};
      auto act = [&](int64_t l) {  // h_l's rows: saved (a block's input, or the read-out's), else scratch
        if (!keep) return buf[l & 1];
        return (l < s.Lb ? lay.input(saved, l) : saved + lay.off_hl) + r0 * D;
      };
      embed_rows(x + r0 * K, weT.data(), w.be, w.pos, act(0), R, N, K, D);
      for (int64_t l = 0; l < s.Lb; ++l)
        block_chunk_forward<HD>(act(l), w.blocks[l], act(l + 1), keep ? lay.block(saved, l) : none, bs, dr + 4 * l,
                                b0, nb, sc.blk);
      float* mean = keep ? saved + lay.off_hs + r0 : st.data();
      float* rstd = keep ? saved + lay.off_hs + M + r0 : st.data() + R;
      ln_rows(act(s.Lb), w.nw, w.nb, sc.a.data(), mean, rstd, R, D, s.norm_eps);
      float* yc = y + r0 * O;
      gemm(false, true, R, O, D, sc.a.data(), D, w.wo, D, 0.0f, yc, O);
      for (int64_t r = 0; r < R; ++r)
        for (int64_t o = 0; o < O; ++o) yc[r * O + o] += w.bo[o];
    }
    if (g_blas_local_threads) g_blas_local_threads(prev);
  }
}

// grads: We (D, K), be, pos (null without), the Lb blocks' 12 each, LN weight and bias, Wo (O, D), bo;
// dx (nullable): the input's gradient
template <int HD>
void network_backward_all(const float* dy, const float* x, const NetWeights& w, const float* saved_c, float* dx,
                          float* const* grads, const NetShape& s, const Drop* dr, int threads) {
  const BlockShape bs = s.block();
  const NetLayout lay(s);
  const bool has_pos = w.pos != nullptr;
  const NetGradLayout ng(s, has_pos);
  float* saved = const_cast<float*>(saved_c);  // read only
  const int64_t N = s.N, D = s.D, K = s.K, O = s.O, M = lay.M;
  const int64_t cs = sets_per_chunk(bs, threads), chunks = (s.B + cs - 1) / cs;
  const int nt = threads < 1 ? 1 : threads;
  OrderedMerge merge(chunks, ng.total);
  const std::vector<float> weT = transposed(w.we, D, K);
#pragma omp parallel num_threads(nt)
  {
    const int prev = g_blas_local_threads ? g_blas_local_threads(1) : 0;
    NetScratch<HD> sc(cs * N, cs, s, true, true);
    for (int64_t w0 = 0; w0 < chunks; w0 += merge.wave()) {
      const int64_t w1 = std::min(chunks, w0 + merge.wave());
#pragma omp for schedule(dynamic, 1)  // a busy core takes fewer chunks
      for (int64_t ch = w0; ch < w1; ++ch) {
        const int64_t b0 = ch * cs, nb = std::min(cs, s.B - b0), R = nb * N, r0 = b0 * N;
        float* part = merge.slot(ch);
        std::memset(part, 0, sizeof(float) * ng.total);
        // read-out: y = LN(h) Wo^T + bo
        const float* dyc = dy + r0 * O;
        const float* hl = saved + lay.off_hl + r0 * D;
        const float *mean = saved + lay.off_hs + r0, *rstd = saved + lay.off_hs + M + r0;
        ln_apply(hl, w.nw, w.nb, mean, rstd, sc.a.data(), R, D);
        gemm(true, false, O, D, R, dyc, O, sc.a.data(), D, 0.0f, part + ng.wo, D);
        for (int64_t r = 0; r < R; ++r)
          for (int64_t o = 0; o < O; ++o) part[ng.bo + o] += dyc[r * O + o];
        float* buf[2] = {sc.h0.data(), sc.h1.data()};
        float* da = sc.blk.y.data();  // free until the first block's backward
        gemm(false, false, R, D, O, dyc, O, w.wo, D, 0.0f, da, D);
        ln_backward(hl, w.nw, mean, rstd, da, nullptr, buf[s.Lb & 1], part + ng.nw, part + ng.nb, R, D);
        for (int64_t l = s.Lb - 1; l >= 0; --l) {
          float* gw[12];
          for (int k = 0; k < 12; ++k) gw[k] = part + ng.blocks + l * ng.gl.total + ng.gl.off[k];
          block_chunk_backward<HD>(buf[(l + 1) & 1], lay.input(saved, l) + r0 * D, w.blocks[l], lay.block(saved, l),
                                   buf[l & 1], gw, ng.gl, bs, dr + 4 * l, b0, nb, sc.blk);
        }
        // input layer: h_0 = x We^T + be (+ pos)
        const float* dh = buf[0];
        const float* xc = x + r0 * K;
        for (int64_t r = 0; r < R; ++r) {
          float* gp = has_pos ? part + ng.pos + (r % N) * D : nullptr;
          for (int64_t c = 0; c < D; c += L) {
            const vf g = loadv(dh + r * D + c);
            storev(part + ng.be + c, loadv(part + ng.be + c) + g);
            if (gp) storev(gp + c, loadv(gp + c) + g);
            for (int64_t k = 0; k < K; ++k)
              storev(part + ng.we + k * D + c, loadv(part + ng.we + k * D + c) + xc[r * K + k] * g);
          }
          if (dx)
            for (int64_t k = 0; k < K; ++k) {
              vf acc = splat(0.0f);
              for (int64_t c = 0; c < D; c += L) acc += loadv(dh + r * D + c) * loadv(&weT[k * D + c]);
              dx[(r0 + r) * K + k] = hsum(acc);
            }
        }
        merge.done(ch);
      }  // the implicit barrier: this wave is merged, its slots free
    }
    if (g_blas_local_threads) g_blas_local_threads(prev);
  }
  const float* t = merge.total();
  int gi = 0;
  for (int64_t c = 0; c < D; ++c)
    for (int64_t k = 0; k < K; ++k) grads[gi][c * K + k] = t[ng.we + k * D + c];
  std::memcpy(grads[++gi], t + ng.be, sizeof(float) * D);
  ++gi;
  if (has_pos) std::memcpy(grads[gi], t + ng.pos, sizeof(float) * N * D);
  for (int64_t l = 0; l < s.Lb; ++l)
    for (int k = 0; k < 12; ++k)
      std::memcpy(grads[++gi], t + ng.blocks + l * ng.gl.total + ng.gl.off[k], sizeof(float) * ng.gl.size[k]);
  std::memcpy(grads[++gi], t + ng.nw, sizeof(float) * D);
  std::memcpy(grads[++gi], t + ng.nb, sizeof(float) * D);
  std::memcpy(grads[++gi], t + ng.wo, sizeof(float) * O * D);
  std::memcpy(grads[++gi], t + ng.bo, sizeof(float) * O);
}

// w: We, be, pos (nullable), the Lb blocks' 12 weights each, LN weight, LN bias, Wo, bo
NetWeights unpack_net(const float* const* w, int64_t Lb) {
  NetWeights nw;
  nw.we = w[0];
  nw.be = w[1];
  nw.pos = w[2];
  for (int64_t l = 0; l < Lb; ++l) nw.blocks.push_back(unpack_weights(w + 3 + 12 * l));
  const float* const* r = w + 3 + 12 * Lb;
  nw.nw = r[0];
  nw.nb = r[1];
  nw.wo = r[2];
  nw.bo = r[3];
  return nw;
}

}  // namespace

extern "C" {

// the ABI version: equal to setflow.nn.fast.kernels.ABI_VERSION (the loader refuses a mismatch)
int setflow_hash_attention_version() { return 2; }

// returns 0 on success, 1 for an unsupported head dimension
int setflow_hash_attention_forward(const float* qkv, float* out, float* lse, int64_t B, int64_t N, int64_t H,
                                   int64_t HD, int32_t s0, int32_t s1, int64_t levels, int threads) {
  const Dims d{B, N, H, H * HD, 3 * H * HD, static_cast<float>(1.0 / std::sqrt(static_cast<double>(HD)))};
  const Drop dr = make_drop(s0, s1, levels);
  switch (HD) {
    case 4: forward_all<4>(qkv, out, lse, d, dr, threads); return 0;
    case 8: forward_all<8>(qkv, out, lse, d, dr, threads); return 0;
    case 16: forward_all<16>(qkv, out, lse, d, dr, threads); return 0;
    default: return 1;
  }
}

int setflow_hash_attention_backward(const float* qkv, const float* out, const float* dout, const float* lse,
                                    float* dqkv, int64_t B, int64_t N, int64_t H, int64_t HD, int32_t s0, int32_t s1,
                                    int64_t levels, int threads) {
  const Dims d{B, N, H, H * HD, 3 * H * HD, static_cast<float>(1.0 / std::sqrt(static_cast<double>(HD)))};
  const Drop dr = make_drop(s0, s1, levels);
  switch (HD) {
    case 4: backward_all<4>(qkv, out, dout, lse, dqkv, d, dr, threads); return 0;
    case 8: backward_all<8>(qkv, out, dout, lse, dqkv, d, dr, threads); return 0;
    case 16: backward_all<16>(qkv, out, dout, lse, dqkv, d, dr, threads); return 0;
    default: return 1;
  }
}

// out = hash-dropout(gelu(u + bias)) over (M, F) rows; F must be a multiple of 16 (returns 1 otherwise)
int setflow_bias_gelu_dropout_forward(const float* u, const float* bias, float* out, int64_t M, int64_t F, int32_t s0,
                                      int32_t s1, int64_t levels, int threads) {
  if (F % L) return 1;
  gelu_forward_rows(u, bias, out, M, F, make_drop(s0, s1, levels), threads);
  return 0;
}

int setflow_bias_gelu_dropout_backward(const float* grad, const float* u, const float* bias, float* du, float* dbias,
                                       int64_t M, int64_t F, int32_t s0, int32_t s1, int64_t levels, int threads) {
  if (F % L) return 1;
  gelu_backward_rows(grad, u, bias, du, dbias, M, F, make_drop(s0, s1, levels), threads);
  return 0;
}

// the BLAS single-precision GEMM (Fortran interface, 32-bit integers) that the block kernels call, and
// optionally the BLAS's "threads for the calling thread" setter (MKL_Set_Num_Threads_Local); the block
// entry points return 2 until an sgemm is registered
void setflow_set_blas(void* sgemm, void* local_threads) {
  g_sgemm = reinterpret_cast<sgemm_fn>(sgemm);
  g_blas_local_threads = reinterpret_cast<blas_threads_fn>(local_threads);
}

// w: the 12 block_core weights; seeds: (4, 2) int32, one pair per dropout site; levels >= 2^24: no dropout.
// Saved buffers (qkv, o, lse, h1, u, stats): all six, or none kept (inference; any null means none).
int setflow_block_forward(const float* x, const float* const* w, float* out, float* qkv, float* o, float* lse,
                          float* h1, float* u, float* stats, int64_t B, int64_t N, int64_t D, int64_t H, int64_t F,
                          float eps, const int32_t* seeds, int64_t levels, int threads) {
  const BlockShape s{B, N, D, H, F, eps};
  const int64_t HD = head_dim(D, H);
  if (const int rc = block_check(s, HD)) return rc;
  const std::vector<Drop> drv = make_drops(seeds, 4, levels);
  const Drop* dr = drv.data();
  const Saved sv{qkv, o, lse, h1, u, stats};
  const BlockWeights bw = unpack_weights(w);
  switch (HD) {
    case 4: block_forward_all<4>(x, bw, out, sv, s, dr, threads); break;
    case 8: block_forward_all<8>(x, bw, out, sv, s, dr, threads); break;
    default: block_forward_all<16>(x, bw, out, sv, s, dr, threads); break;
  }
  return 0;
}

// dw: 12 outputs shaped like w (overwritten)
int setflow_block_backward(const float* dout, const float* x, const float* const* w, const float* qkv, const float* o,
                           const float* lse, const float* h1, const float* u, const float* stats, float* dx,
                           float* const* dw, int64_t B, int64_t N, int64_t D, int64_t H, int64_t F, float eps,
                           const int32_t* seeds, int64_t levels, int threads) {
  const BlockShape s{B, N, D, H, F, eps};
  const int64_t HD = head_dim(D, H);
  if (const int rc = block_check(s, HD)) return rc;
  const std::vector<Drop> drv = make_drops(seeds, 4, levels);
  const Drop* dr = drv.data();
  Saved sv{const_cast<float*>(qkv), const_cast<float*>(o), const_cast<float*>(lse), const_cast<float*>(h1),
           const_cast<float*>(u), const_cast<float*>(stats)};
  const BlockWeights bw = unpack_weights(w);
  switch (HD) {
    case 4: block_backward_all<4>(dout, x, bw, sv, dx, dw, s, dr, threads); break;
    case 8: block_backward_all<8>(dout, x, bw, sv, dx, dw, s, dr, threads); break;
    default: block_backward_all<16>(dout, x, bw, sv, dx, dw, s, dr, threads); break;
  }
  return 0;
}

// floats of the network forward's saved buffer (see NetLayout)
int64_t setflow_network_saved_size(int64_t B, int64_t N, int64_t D, int64_t H, int64_t F, int64_t Lb) {
  return NetLayout(NetShape{B, N, 0, D, H, F, 0, Lb, 0.0f, 0.0f}).total;
}

// x (B, N, K) -> y (B, N, O). w: 3 + 12 Lb + 4 pointers (see unpack_net); seeds (Lb, 4, 2) int32;
// saved: setflow_network_saved_size floats, or null (inference: nothing kept). Returns as setflow_block_forward.
int setflow_network_forward(const float* x, const float* const* w, float* y, float* saved, int64_t B, int64_t N,
                            int64_t K, int64_t D, int64_t H, int64_t F, int64_t O, int64_t Lb, float eps,
                            float norm_eps, const int32_t* seeds, int64_t levels, int threads) {
  const NetShape s{B, N, K, D, H, F, O, Lb, eps, norm_eps};
  const int64_t HD = head_dim(D, H);
  if (const int rc = block_check(s.block(), HD)) return rc;
  const std::vector<Drop> dr = make_drops(seeds, 4 * Lb, levels);
  const NetWeights nw = unpack_net(w, Lb);
  switch (HD) {
    case 4: network_forward_all<4>(x, nw, y, saved, s, dr.data(), threads); break;
    case 8: network_forward_all<8>(x, nw, y, saved, s, dr.data(), threads); break;
    default: network_forward_all<16>(x, nw, y, saved, s, dr.data(), threads); break;
  }
  return 0;
}

// grads: outputs shaped like w (pos's null without positions); dx nullable
int setflow_network_backward(const float* dy, const float* x, const float* const* w, const float* saved, float* dx,
                             float* const* grads, int64_t B, int64_t N, int64_t K, int64_t D, int64_t H, int64_t F,
                             int64_t O, int64_t Lb, float eps, float norm_eps, const int32_t* seeds, int64_t levels,
                             int threads) {
  const NetShape s{B, N, K, D, H, F, O, Lb, eps, norm_eps};
  const int64_t HD = head_dim(D, H);
  if (const int rc = block_check(s.block(), HD)) return rc;
  const std::vector<Drop> dr = make_drops(seeds, 4 * Lb, levels);
  const NetWeights nw = unpack_net(w, Lb);
  switch (HD) {
    case 4: network_backward_all<4>(dy, x, nw, saved, dx, grads, s, dr.data(), threads); break;
    case 8: network_backward_all<8>(dy, x, nw, saved, dx, grads, s, dr.data(), threads); break;
    default: network_backward_all<16>(dy, x, nw, saved, dx, grads, s, dr.data(), threads); break;
  }
  return 0;
}

}  // extern "C"
