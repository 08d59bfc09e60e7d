// Grouped GEMMs over kept-unit windows, one launch for all groups (time steps).
//
// A window is a contiguous column (or row) range [off[g], off[g] + cnt[g]) of a weight whose
// axis was permuted once per batch ("ext" layout, see onmt_sdrop/ops/torch_backend.py), so every
// group reads its kept weights with plain strided loads. Compact activations are (G, B, kmax).
//
//   consumer_fwd : Y[g]          (B x N)  = Xc[g][:, :k]      (B x k) * W[:, o:o+k]^T
//   consumer_dx  : dXc[g][:, :k] (B x k)  = dY[g]             (B x N) * W[:, o:o+k]
//   consumer_dw  : dW[:, o:o+k]  (N x k) += dY[g]^T           (N x B) * Xc[g][:, :k]
//   producer_fwd : Yc[g][:, :k]  (B x k)  = X[g]              (B x I) * W[o:o+k, :]^T
//   producer_dx  : dX[g]         (B x I)  = dYc[g][:, :k]     (B x k) * W[o:o+k, :]
//   producer_dw  : dW[o:o+k, :]  (k x I) += dYc[g][:, :k]^T   (k x B) * X[g]
//
// All six are one tiled kernel, C_g = A_g * B_g with per-group extents and strides; the weight
// gradients accumulate with atomicAdd because windows of different groups overlap. Inputs are
// float, half or bfloat16 (T; bf16 is its raw bits, converted here without a header),
// accumulation and weight gradients are float.
//
// window_dw is the atomic-free alternative for the two weight gradients: each block owns one
// tile of dW on the extended window axis U (size + kmax long) and the other axis V, loops over
// the groups whose window meets its tile, and adds its sum once (deterministic):
//   dW[u, v] += sum_g sum_b Q[g][b][u - off[g]] * P[g][b][v]      for off[g] <= u < off[g] + cnt[g]
//   consumer_dw: Q = Xc (compact input), P = dY, dW stored (V = N rows, U = columns)
//   producer_dw: Q = dYc (compact output grad), P = X, dW stored (U = rows, V = I columns)
#include <cuda_fp16.h>

#define TILE 32
#define SUB 8   // each thread computes SUB outputs along the tile's rows

struct bf16 { unsigned short bits; };   // bfloat16 as its raw bits

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<bf16>(bf16 v) {
    return __uint_as_float(((unsigned int)v.bits) << 16);
}
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) {   // round to nearest even
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{(unsigned short)0x7fc0};   // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{(unsigned short)(u >> 16)};
}

// Element (r, c) of a matrix given its base pointer and (row, column) strides in elements.
struct View {
    long long base, rs, cs;
};

// C[g] (M x N) (+)= A[g] (M x K) * B[g] (K x N); extents may depend on the group's count k.
// mode bit 0/1/2: M, N or K equals the group's count (otherwise m_full / n_full / k_full).
// Pointers: A/B/C bases per group = base + g * gstride + off[g] * ostride (see launcher).
template <typename TA, typename TB, typename TC, bool ACCUM>
__device__ void grouped_gemm_tile(const TA* __restrict__ A, const TB* __restrict__ B, TC* C,
                                  const long long* __restrict__ off, const long long* __restrict__ cnt,
                                  int mode, int m_full, int n_full, int k_full,
                                  long long a_g, long long a_o, long long a_rs, long long a_cs,
                                  long long b_g, long long b_o, long long b_rs, long long b_cs,
                                  long long c_g, long long c_o, long long c_rs, long long c_cs) {
    const int g = blockIdx.z;
    const int k_g = (int)cnt[g];
    const long long o = off[g];
    const int M = (mode & 1) ? k_g : m_full;
    const int N = (mode & 2) ? k_g : n_full;
    const int K = (mode & 4) ? k_g : k_full;
    const int row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
    if (row0 >= M || col0 >= N || K == 0) return;
    const TA* a = A + g * a_g + o * a_o;
    const TB* b = B + g * b_g + o * b_o;
    TC* c = C + g * c_g + o * c_o;

    __shared__ float As[TILE][TILE + 1];
    __shared__ float Bs[TILE][TILE + 1];
    const int tx = threadIdx.x;          // 0..TILE-1: column within the tile
    const int ty = threadIdx.y;          // 0..TILE/SUB-1: row group within the tile
    float acc[SUB];
#pragma unroll
    for (int s = 0; s < SUB; ++s) acc[s] = 0.f;

    for (int k0 = 0; k0 < K; k0 += TILE) {
#pragma unroll
        for (int s = 0; s < SUB; ++s) {
            const int r = ty * SUB + s;
            const int ar = row0 + r, ak = k0 + tx;
            As[r][tx] = (ar < M && ak < K) ? to_f(a[ar * a_rs + ak * a_cs]) : 0.f;
            const int bk = k0 + r, bc = col0 + tx;
            Bs[r][tx] = (bk < K && bc < N) ? to_f(b[bk * b_rs + bc * b_cs]) : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < TILE; ++kk) {
            const float bv = Bs[kk][tx];
#pragma unroll
            for (int s = 0; s < SUB; ++s) acc[s] += As[ty * SUB + s][kk] * bv;
        }
        __syncthreads();
    }
#pragma unroll
    for (int s = 0; s < SUB; ++s) {
        const int r = row0 + ty * SUB + s, cc = col0 + tx;
        if (r < M && cc < N) {
            TC* p = c + r * c_rs + cc * c_cs;
            if (ACCUM) atomicAdd((float*)p, acc[s]);
            else *p = from_f<TC>(acc[s]);
        }
    }
}

#define GROUPED_GEMM_ARGS                                                                        \
    const long long *off, const long long *cnt, int mode, int m_full, int n_full, int k_full,      \
    long long a_g, long long a_o, long long a_rs, long long a_cs, long long b_g, long long b_o,    \
    long long b_rs, long long b_cs, long long c_g, long long c_o, long long c_rs, long long c_cs
#define GROUPED_GEMM_PASS off, cnt, mode, m_full, n_full, k_full, a_g, a_o, a_rs, a_cs, b_g, b_o, \
    b_rs, b_cs, c_g, c_o, c_rs, c_cs

// Activations x weights -> activations (forward and dX): C has the inputs' type.
extern "C" __global__ void grouped_gemm_f32(const float* A, const float* B, float* C,
                                            GROUPED_GEMM_ARGS) {
    grouped_gemm_tile<float, float, float, false>(A, B, C, GROUPED_GEMM_PASS);
}
extern "C" __global__ void grouped_gemm_f16(const __half* A, const __half* B, __half* C,
                                            GROUPED_GEMM_ARGS) {
    grouped_gemm_tile<__half, __half, __half, false>(A, B, C, GROUPED_GEMM_PASS);
}
extern "C" __global__ void grouped_gemm_bf16(const bf16* A, const bf16* B, bf16* C,
                                             GROUPED_GEMM_ARGS) {
    grouped_gemm_tile<bf16, bf16, bf16, false>(A, B, C, GROUPED_GEMM_PASS);
}
// Weight gradients: float accumulation across the overlapping windows of all groups.
extern "C" __global__ void grouped_gemm_acc_f32(const float* A, const float* B, float* C,
                                                GROUPED_GEMM_ARGS) {
    grouped_gemm_tile<float, float, float, true>(A, B, C, GROUPED_GEMM_PASS);
}
extern "C" __global__ void grouped_gemm_acc_f16(const __half* A, const __half* B, float* C,
                                                GROUPED_GEMM_ARGS) {
    grouped_gemm_tile<__half, __half, float, true>(A, B, C, GROUPED_GEMM_PASS);
}
extern "C" __global__ void grouped_gemm_acc_bf16(const bf16* A, const bf16* B, float* C,
                                                 GROUPED_GEMM_ARGS) {
    grouped_gemm_tile<bf16, bf16, float, true>(A, B, C, GROUPED_GEMM_PASS);
}

// Atomic-free weight gradient over windows (see the table at the top). Block (TILE, TILE/SUB):
// thread (tx, ty) owns dW[u0 + ty*SUB + s, v0 + tx] for s < SUB. Every block of a launch reads the
// same off/cnt, so the skip of a group is uniform across the block (no divergent __syncthreads).
template <typename T>
__device__ void window_dw_tile(const T* __restrict__ Q, const T* __restrict__ P, float* dW,
                               const long long* __restrict__ off, const long long* __restrict__ cnt,
                               int groups, int rows, int u_len, int v_len,
                               long long q_g, long long q_b, long long p_g, long long p_b,
                               long long dw_u, long long dw_v) {
    const int u0 = blockIdx.y * TILE, v0 = blockIdx.x * TILE;
    if (u0 >= u_len || v0 >= v_len) return;
    __shared__ float Qs[TILE][TILE + 1];
    __shared__ float Ps[TILE][TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    float acc[SUB];
#pragma unroll
    for (int s = 0; s < SUB; ++s) acc[s] = 0.f;
    for (int g = 0; g < groups; ++g) {
        const long long o = off[g];
        const int k = (int)cnt[g];
        if (k == 0 || u0 + TILE <= o || u0 >= o + k) continue;
        const T* q = Q + g * q_g;
        const T* p = P + g * p_g;
        for (int b0 = 0; b0 < rows; b0 += TILE) {
#pragma unroll
            for (int s = 0; s < SUB; ++s) {
                const int bb = ty * SUB + s, b = b0 + bb;
                const long long j = (long long)u0 + tx - o;        // compact column of u0 + tx
                Qs[bb][tx] = (b < rows && j >= 0 && j < k) ? to_f(q[b * q_b + j]) : 0.f;
                const int v = v0 + tx;
                Ps[bb][tx] = (b < rows && v < v_len) ? to_f(p[b * p_b + v]) : 0.f;
            }
            __syncthreads();
#pragma unroll 8
            for (int bb = 0; bb < TILE; ++bb) {
                const float pv = Ps[bb][tx];
#pragma unroll
                for (int s = 0; s < SUB; ++s) acc[s] += Qs[bb][ty * SUB + s] * pv;
            }
            __syncthreads();
        }
    }
#pragma unroll
    for (int s = 0; s < SUB; ++s) {
        const int u = u0 + ty * SUB + s, v = v0 + tx;
        if (u < u_len && v < v_len) dW[u * dw_u + v * dw_v] += acc[s];
    }
}

#define WINDOW_DW_ARGS                                                                            \
    const long long *off, const long long *cnt, int groups, int rows, int u_len, int v_len,         \
    long long q_g, long long q_b, long long p_g, long long p_b, long long dw_u, long long dw_v
#define WINDOW_DW_PASS off, cnt, groups, rows, u_len, v_len, q_g, q_b, p_g, p_b, dw_u, dw_v

extern "C" __global__ void window_dw_f32(const float* Q, const float* P, float* dW,
                                         WINDOW_DW_ARGS) {
    window_dw_tile<float>(Q, P, dW, WINDOW_DW_PASS);
}
extern "C" __global__ void window_dw_f16(const __half* Q, const __half* P, float* dW,
                                         WINDOW_DW_ARGS) {
    window_dw_tile<__half>(Q, P, dW, WINDOW_DW_PASS);
}
extern "C" __global__ void window_dw_bf16(const bf16* Q, const bf16* P, float* dW,
                                          WINDOW_DW_ARGS) {
    window_dw_tile<bf16>(Q, P, dW, WINDOW_DW_PASS);
}
