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
// split by the compiler elsewhere). Every inner loop runs along one axis of the N x N weight tile
// with 16 rows (or columns) in the lanes, so softmax sums and maxima are lane-wise and no
// horizontal reductions are needed. The backward recomputes P from lse (FlashAttention-style)
// with keys in the lanes, accumulating dk and dv in registers and keeping dS (N x N, L1-sized)
// for dq = dS k, a small GEMM done last. The softmax backward needs rowdot_i = sum_j P_ij dP_ij
// with dP_ij = M_ij (dout_i . v_j), which equals dout_i . out_i.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

namespace {

constexpr int L = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));

inline vf splat(float x) { return vf{} + x; }
inline vu lane_index() { return vu{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }

// exp(x) for x <= ~0 (softmax arguments): Cody-Waite range reduction and a degree-6 polynomial
// (relative error ~2e-7); arguments below -87 give ~1e-38 instead of underflowing.
inline vf vexp(vf x) {
  x = x < -87.0f ? splat(-87.0f) : x;
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
  p = p * r * r + r + 1.0f;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * (vf)e;  // GCC vector cast: the same bits read as floats
}

struct Drop {
  bool on;
  uint32_t s0, s1, levels;
  float scale;
};

// -1 in the lanes kept by the hash mask, 0 elsewhere
inline vi keep_lanes(vu idx, const Drop& d) {
  vu x = (idx * 0x9E3779B1u + d.s0) ^ d.s1;
  x = (x ^ (x >> 16)) * 0x7FEB352Du;
  x = (x ^ (x >> 15)) * 0x846CA68Bu;
  x = (x ^ (x >> 16)) * 0x27D4EB2Fu;
  return (x >> 8) < d.levels;
}

struct Dims {
  int64_t B, N, H, D, rs;  // rs: row stride of qkv, 3 D
  float scale;
};

// one row of a head: HD floats as one vector (xmm / ymm / zmm for HD = 4 / 8 / 16)
template <int HD>
struct RowVec {
  typedef float type __attribute__((vector_size(HD * sizeof(float))));
};

template <int HD>
struct Scratch {
  int64_t np;  // N rounded up to whole vectors: the row stride of ds
  std::vector<float> k, v, q, go, lse, rowdot, ds;
  std::vector<vf> s;
  explicit Scratch(int64_t N)
      : np((N + L - 1) / L * L), k(N * HD), v(N * HD), q(N * HD), go(N * HD), lse(N), rowdot(N), ds(N * np), s(N) {}
};

// k, v (and with q_too the scaled q) of head (b, h) into row-major [N][HD] scratch rows
template <int HD>
void load_head(const float* qkv, const Dims& d, int64_t b, int64_t h, Scratch<HD>& sc, bool q_too) {
  const float* base = qkv + b * d.N * d.rs + h * HD;
  for (int64_t j = 0; j < d.N; ++j) {
    const float* row = base + j * d.rs;
    for (int c = 0; c < HD; ++c) {
      sc.k[j * HD + c] = row[d.D + c];
      sc.v[j * HD + c] = row[2 * d.D + c];
      if (q_too) sc.q[j * HD + c] = row[c] * d.scale;
    }
  }
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

inline vf gather_lanes(const float* src, int64_t i0, int n) {
  alignas(64) float t[L] = {0};
  for (int l = 0; l < n; ++l) t[l] = src[i0 + l];
  vf r;
  std::memcpy(&r, t, sizeof(vf));
  return r;
}

// vectors src[c] (lanes l < n) -> dst[(i0 + l) * stride + c]
template <int HD>
inline void scatter_cols(const vf* src, float* dst, int64_t i0, int n, int64_t stride) {
  alignas(64) float t[HD][L];
  for (int c = 0; c < HD; ++c) std::memcpy(t[c], &src[c], sizeof(vf));
  for (int l = 0; l < n; ++l)
    for (int c = 0; c < HD; ++c) dst[(i0 + l) * stride + c] = t[c][l];
}

template <int HD>
void forward_head(const float* qkv, float* out, float* lse, const Dims& d, const Drop& dr, int64_t b, int64_t h,
                  Scratch<HD>& sc) {
  const int64_t N = d.N;
  load_head<HD>(qkv, d, b, h, sc, true);
  const uint32_t bh = static_cast<uint32_t>(b * d.H + h);
  for (int64_t i0 = 0; i0 < N; i0 += L) {
    const int n = static_cast<int>(N - i0 < L ? N - i0 : L);
    vf q[HD], acc[HD];
    gather_cols<HD>(sc.q.data(), i0, n, q);
    vf mx = splat(-INFINITY);
    for (int64_t j = 0; j < N; ++j) {
      const float* kj = &sc.k[j * HD];
      vf s = q[0] * kj[0];
      for (int c = 1; c < HD; ++c) s += q[c] * kj[c];
      sc.s[j] = s;
      mx = s > mx ? s : mx;
    }
    for (int c = 0; c < HD; ++c) acc[c] = splat(0.0f);
    vf sum = splat(0.0f);
    const vu row = (lane_index() + static_cast<uint32_t>(bh * N + i0)) * static_cast<uint32_t>(N);
    for (int64_t j = 0; j < N; ++j) {
      const vf e = vexp(sc.s[j] - mx);
      sum += e;
      const vf w = dr.on ? (keep_lanes(row + static_cast<uint32_t>(j), dr) ? e : splat(0.0f)) : e;
      const float* vj = &sc.v[j * HD];
      for (int c = 0; c < HD; ++c) acc[c] += w * vj[c];
    }
    const vf inv = splat(dr.on ? dr.scale : 1.0f) / sum;
    for (int c = 0; c < HD; ++c) acc[c] *= inv;
    scatter_cols<HD>(acc, out + b * N * d.D + h * HD, i0, n, d.D);
    alignas(64) float m[L], s[L];
    std::memcpy(m, &mx, sizeof(vf));
    std::memcpy(s, &sum, sizeof(vf));
    for (int l = 0; l < n; ++l) lse[bh * N + i0 + l] = m[l] + std::log(s[l]);
  }
}

template <int HD>
void backward_head(const float* qkv, const float* out, const float* dout, const float* lse, float* dqkv,
                   const Dims& d, const Drop& dr, int64_t b, int64_t h, Scratch<HD>& sc) {
  const int64_t N = d.N, NP = sc.np;
  load_head<HD>(qkv, d, b, h, sc, true);
  const uint32_t bh = static_cast<uint32_t>(b * d.H + h);
  for (int64_t i = 0; i < N; ++i) {
    const float* go = dout + (b * N + i) * d.D + h * HD;
    const float* o = out + (b * N + i) * d.D + h * HD;
    float r = 0.0f;
    for (int c = 0; c < HD; ++c) {
      sc.go[i * HD + c] = go[c];
      r += go[c] * o[c];
    }
    sc.rowdot[i] = r;
    sc.lse[i] = lse[bh * N + i];
  }
  const vf dscale = splat(dr.on ? dr.scale : 1.0f);
  float* dbase = dqkv + b * N * d.rs + h * HD;
  // keys in the lanes, one pass over the queries: dk, dv in registers, dS kept row-major for dq
  for (int64_t j0 = 0; j0 < N; j0 += L) {
    const int n = static_cast<int>(N - j0 < L ? N - j0 : L);
    vf k[HD], v[HD], dk[HD], dv[HD];
    gather_cols<HD>(sc.k.data(), j0, n, k);
    gather_cols<HD>(sc.v.data(), j0, n, v);
    for (int c = 0; c < HD; ++c) dk[c] = dv[c] = splat(0.0f);
    const vu col = lane_index() + static_cast<uint32_t>(j0);
    for (int64_t i = 0; i < N; ++i) {
      const float* qi = &sc.q[i * HD];
      const float* gi = &sc.go[i * HD];
      vf s = k[0] * qi[0];
      vf da = v[0] * gi[0];
      for (int c = 1; c < HD; ++c) {
        s += k[c] * qi[c];
        da += v[c] * gi[c];
      }
      const vf p = vexp(s - sc.lse[i]);
      vf a = p * dscale;
      vf dp = da * dscale;
      if (dr.on) {
        const vi keep = keep_lanes(col + static_cast<uint32_t>((bh * N + i) * N), dr);
        a = keep ? a : splat(0.0f);
        dp = keep ? dp : splat(0.0f);
      }
      const vf ds = p * (dp - sc.rowdot[i]);
      std::memcpy(&sc.ds[i * NP + j0], &ds, sizeof(vf));  // lanes past N hold junk, never read
      for (int c = 0; c < HD; ++c) {
        dv[c] += a * gi[c];
        dk[c] += ds * qi[c];
      }
    }
    scatter_cols<HD>(dk, dbase + d.D, j0, n, d.rs);
    scatter_cols<HD>(dv, dbase + 2 * d.D, j0, n, d.rs);
  }
  // dq = scale * dS k: rows of HD floats, four query rows at a time (independent accumulator chains)
  typedef typename RowVec<HD>::type vr;
  int64_t i = 0;
  for (; i < N; i += 4) {
    const int rows = static_cast<int>(N - i < 4 ? N - i : 4);
    vr acc[4] = {};
    for (int64_t j = 0; j < N; ++j) {
      vr kj;
      std::memcpy(&kj, &sc.k[j * HD], sizeof(vr));
      for (int r = 0; r < 4; ++r) acc[r] += sc.ds[(i + (r < rows ? r : 0)) * NP + j] * kj;
    }
    for (int r = 0; r < rows; ++r) {
      const vr o = acc[r] * d.scale;
      std::memcpy(dbase + (i + r) * d.rs, &o, sizeof(vr));
    }
  }
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

template <int HD>
void forward_all(const float* qkv, float* out, float* lse, const Dims& d, const Drop& dr, int threads) {
#pragma omp parallel num_threads(threads)
  {
    Scratch<HD> sc(d.N);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < d.B * d.H; ++bh) forward_head<HD>(qkv, out, lse, d, dr, bh / d.H, bh % d.H, sc);
  }
}

template <int HD>
void backward_all(const float* qkv, const float* out, const float* dout, const float* lse, float* dqkv, const Dims& d,
                  const Drop& dr, int threads) {
#pragma omp parallel num_threads(threads)
  {
    Scratch<HD> sc(d.N);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < d.B * d.H; ++bh)
      backward_head<HD>(qkv, out, dout, lse, dqkv, d, dr, bh / d.H, bh % d.H, sc);
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
  const vf az = z < 0.0f ? -z : z;
  const vf t = 1.0f / (az * 0.3275911f + 1.0f);
  vf poly = t * 1.061405429f - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  poly = poly * t;
  const vf e = vexp(-(z * z));  // exp(-x^2 / 2)
  const vf erf_abs = 1.0f - poly * e;
  const vf erf = z < 0.0f ? -erf_abs : erf_abs;
  return GeluParts{(erf + 1.0f) * 0.5f, x * e * 0.39894228040143268f};
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

}  // namespace

extern "C" {

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

}  // extern "C"
