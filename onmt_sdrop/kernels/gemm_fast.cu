// Faster kernels for the grouped window GEMMs of grouped_gemm.cu, with the SAME contracts.
//
// Three families, each with the grouped GEMM (plain and accumulating) and the atomic-free window
// weight gradient; cupy_backend.GEMM_KERNEL picks the family:
//
//   gemm_tiled_{f32,f16,bf16}, gemm_tiled_acc_*, window_dw_tiled_*   ("tiled")
//       true FP32 SIMT math: 64x64 block tile, 256 threads (16 x 16), each thread 4 x 4 outputs
//       (rows ty*4 + i, columns tx + 16*j), k tile 16.
//   gemm_wide_{f32,f16,bf16}, gemm_wide_acc_*, window_dw_wide_*      ("wide")
//       true FP32 SIMT math for large shapes: 128x128 block tile, 256 threads (16 x 16), each
//       thread 8 x 8 outputs (rows 64*h + ty*4 + i, columns 64*h + tx*4 + j, h and i, j < 4:
//       two float4 fragments per axis from shared memory), k tile 16. Grids over 128-tiles.
//   gemm_tc_{f16,bf16,tf32}, gemm_tc_acc_*, window_dw_tc_*            ("tensor")
//       tensor cores (mma.sync m16n8k16 for f16/bf16, m16n8k8 for tf32 = float inputs rounded to
//       TF32, used only when the user allowed TF32), float accumulation: 64x64 block tile,
//       128 threads = 4 warps in 2 x 2, each warp 32 x 32 (2 x 4 mma tiles), k tile 32.
//
// Contracts (identical to grouped_gemm.cu's, see its table):
//   gemm_*     : C[g] (M x N) (+)= A[g] (M x K) * B[g] (K x N), bases per group
//                base + g * gstride + off[g] * ostride, mode bits 1/2/4: M/N/K = cnt[g];
//                grid (ceil(N/T), ceil(M/T), groups) over the largest extents, T the family's
//                block tile (64; "wide": 128).
//                gemm_*_acc adds into float C with atomicAdd (windows of groups overlap).
//   window_dw_*: dW[u, v] += sum_g sum_b Q[g][b][u - off[g]] * P[g][b][v] for
//                off[g] <= u < off[g] + cnt[g]; grid (ceil(v_len/T), ceil(u_len/T), 1); each
//                block owns its dW tile (no atomics, deterministic).
// Inputs: float, or 16-bit (fp16 / bf16 passed as their raw bits); C of the plain GEMM has the
// inputs' type, weight gradients are float.
//
// All families stage tiles through registers into double-buffered shared memory: the global
// loads of tile k+1 are issued before the math on tile k, and one __syncthreads per tile
// separates the buffers. (cp.async is not used: the strides are general and a window starts at
// any offset, so 16-byte aligned vector copies cannot be assumed.) Out-of-range elements of a
// tile (M, N, K not multiples of the tile, counts varying by group) load as zero and are not
// stored. No headers: 16-bit conversions are PTX or bit arithmetic, so NVRTC needs no include
// path.

typedef unsigned short u16;
typedef unsigned int u32;

// ------------------------------------------------------------------ PTX helpers
//
// The only inline PTX of this file. tests/cuda_host.cpp compiles this file for the CPU (one
// fiber per CUDA thread) with SDROP_HOST_EMU defined and supplies its own versions of these,
// so the tests run the kernels' code itself on machines without a GPU.

// mma.sync m16n8k16 / tf32 need sm_80 or newer; on older GPUs the module still compiles (the
// "tiled" kernels run there) and the tensor kernels trap (cupy_backend never picks them there).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define TC_ARCH 1
#else
#define TC_ARCH 0
#endif

#ifndef SDROP_HOST_EMU
__device__ __forceinline__ float h2f(u16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
}
__device__ __forceinline__ u16 f2h(float v) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
__device__ __forceinline__ u32 f2tf32(float v) {   // round to nearest, ties away
    u32 t = 0;
#if TC_ARCH
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(t) : "f"(v));
#else
    (void)v;
#endif
    return t;
}
#if TC_ARCH
#define MMA_BODY(SHAPE, TYPE)                                                                     \
    asm volatile("mma.sync.aligned." SHAPE ".row.col.f32." TYPE "." TYPE ".f32 "                  \
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"                 \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
#define MMA_BODY(SHAPE, TYPE) (void)d; (void)a; (void)b; __trap();
#endif
// d (16x8, float) += a (16xK) * b (Kx8), one warp, fragments as in tc_mainloop's comment
__device__ __forceinline__ void mma_f16(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    MMA_BODY("m16n8k16", "f16")
}
__device__ __forceinline__ void mma_bf16(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    MMA_BODY("m16n8k16", "bf16")
}
__device__ __forceinline__ void mma_tf32(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    MMA_BODY("m16n8k8", "tf32")
}
#undef MMA_BODY
#endif

// ------------------------------------------------------------------ element types

struct F32 {
    typedef float raw;
    static __device__ __forceinline__ float to_f(float v) { return v; }
    static __device__ __forceinline__ float from_f(float v) { return v; }
};
struct F16 {
    typedef u16 raw;
    static __device__ __forceinline__ float to_f(u16 v) { return h2f(v); }
    static __device__ __forceinline__ u16 from_f(float v) { return f2h(v); }
};
struct BF16 {
    typedef u16 raw;
    static __device__ __forceinline__ float to_f(u16 v) { return __uint_as_float(((u32)v) << 16); }
    static __device__ __forceinline__ u16 from_f(float v) {   // round to nearest even
        u32 u = __float_as_uint(v);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)0x7fc0;   // NaN
        u += 0x7fffu + ((u >> 16) & 1u);
        return (u16)(u >> 16);
    }
};

// ------------------------------------------------------------------ where the k tiles come from

// Position of a k tile: the group it belongs to (window_dw loops over groups), its first k, and
// the group's window.
struct KPos {
    int g, k0;
    long long o;
    int cnt;
};

// Grouped GEMM: one group per block (blockIdx.z), k tiles 0, BK, ... < K.
template <int BK>
struct GroupedTiles {
    int K;
    __device__ KPos first(int g, long long o, int cnt) const { return KPos{g, 0, o, cnt}; }
    __device__ KPos next(KPos p) const { p.k0 += BK; return p; }
    __device__ bool valid(const KPos& p) const { return p.k0 < K; }
};

// window_dw: every group whose window meets the block's u range [u0, u0 + BM), then its rows.
// Every block reads the same off/cnt, so the loop is uniform within a block.
template <int BK, int BM>
struct WindowTiles {
    const long long* off;
    const long long* cnt;
    int groups, rows, u0;
    __device__ KPos seek(int g) const {
        for (; g < groups && rows > 0; ++g) {
            const long long o = off[g];
            const int k = (int)cnt[g];
            if (k > 0 && u0 < o + k && u0 + BM > o) return KPos{g, 0, o, k};
        }
        return KPos{groups, 0, 0, 0};
    }
    __device__ KPos first() const { return seek(0); }
    __device__ KPos next(KPos p) const {
        p.k0 += BK;
        return p.k0 < rows ? p : seek(p.g + 1);
    }
    __device__ bool valid(const KPos& p) const { return p.g < groups; }
};

// Which elements of a ROWS x COLS tile thread `tid` of THREADS loads: element e = tid + l*THREADS
// (l < ROWS*COLS/THREADS) walks the fast axis with consecutive threads, so that they load
// adjacent addresses. Because THREADS is a multiple of the fast extent, thread tid's elements
// are (r0 + l*dr, c0 + l*dc), one of dr, dc zero.
struct Lanes {
    int r0, c0, dr, dc;
};
template <int ROWS, int COLS, int THREADS>
__device__ __forceinline__ Lanes lanes(int tid, bool col_fast) {
    static_assert(THREADS % ROWS == 0 && THREADS % COLS == 0, "threads must cover a line");
    return col_fast ? Lanes{tid / COLS, tid % COLS, THREADS / COLS, 0}
                    : Lanes{tid % ROWS, tid / ROWS, 0, THREADS / ROWS};
}

// out[l] = V(r + l*dr, c + l*dc) of the view V(i, j) = v[i*rs + j*cs], zero outside
// r_lo <= i < r_hi, j < c_hi. A thread whose elements are all inside (interior tiles) loads
// with no per-element test.
template <int L, typename R>
__device__ __forceinline__ void load_view(R (&out)[L], const R* v, long long rs, long long cs,
                                          long long r, long long c, const Lanes& ln,
                                          long long r_lo, long long r_hi, long long c_hi) {
    const R* p = v + r * rs + c * cs;
    const long long step = ln.dr * rs + ln.dc * cs;
    const long long r_end = r + (long long)ln.dr * (L - 1), c_end = c + (long long)ln.dc * (L - 1);
    if (r >= r_lo && r_end < r_hi && c_end < c_hi) {
#pragma unroll
        for (int l = 0; l < L; ++l) out[l] = p[l * step];
    } else {
#pragma unroll
        for (int l = 0; l < L; ++l) {
            const long long i = r + (long long)l * ln.dr, j = c + (long long)l * ln.dc;
            out[l] = (i >= r_lo && i < r_hi && j < c_hi) ? p[l * step] : R(0);
        }
    }
}

// Operand loaders: a thread's elements (m, k) of A's tile / (k, n) of B's tile for k tile `t`,
// zero outside the matrix. k_fast / n_fast: whether consecutive k (A) / n (B) are adjacent in
// memory.
template <typename R>
struct GemmA {
    const R* p;
    long long rs, cs;
    int M, K, m0;
    __device__ bool k_fast() const { return cs == 1; }
    template <int L>
    __device__ void load(R (&out)[L], const Lanes& ln, const KPos& t) const {
        load_view<L>(out, p, rs, cs, m0 + ln.r0, t.k0 + ln.c0, ln, 0, M, K);
    }
};
template <typename R>
struct GemmB {
    const R* p;
    long long rs, cs;
    int K, N, n0;
    __device__ bool n_fast() const { return cs == 1; }
    template <int L>
    __device__ void load(R (&out)[L], const Lanes& ln, const KPos& t) const {
        load_view<L>(out, p, rs, cs, t.k0 + ln.r0, n0 + ln.c0, ln, 0, K, N);
    }
};
// window_dw: A(u, b) = Q[g][b][u - off[g]] inside the window, B(b, v) = P[g][b][v].
template <typename R>
struct WinA {
    const R* q;
    long long q_g, q_b;
    int rows, m0;
    __device__ bool k_fast() const { return false; }
    template <int L>
    __device__ void load(R (&out)[L], const Lanes& ln, const KPos& t) const {
        load_view<L>(out, q + t.g * q_g, 1, q_b, m0 + ln.r0 - t.o, t.k0 + ln.c0, ln, 0, t.cnt,
                     rows);
    }
};
template <typename R>
struct WinB {
    const R* p;
    long long p_g, p_b;
    int rows, N, n0;
    __device__ bool n_fast() const { return true; }
    template <int L>
    __device__ void load(R (&out)[L], const Lanes& ln, const KPos& t) const {
        load_view<L>(out, p + t.g * p_g, p_b, 1, t.k0 + ln.r0, n0 + ln.c0, ln, 0, rows, N);
    }
};

// ------------------------------------------------------------------ "tiled": register-blocked SIMT

#define T_BM 64
#define T_BN 64
#define T_BK 16
#define T_THREADS 256
#define T_LOADS (T_BM * T_BK / T_THREADS)   // elements of A (and of B) each thread loads

// acc[i][j] = C(m0 + ty*4 + i, n0 + tx + 16*j) over all k tiles of `tiles`.
template <class E, class LA, class LB, class Tiles>
__device__ __forceinline__ void tiled_mainloop(const LA& la, const LB& lb, const Tiles& tiles,
                                               KPos kp, float (&acc)[4][4]) {
    typedef typename E::raw R;
    __shared__ __align__(16) float As[2][T_BK][T_BM + 4];   // A transposed: (k, m)
    __shared__ __align__(16) float Bs[2][T_BK][T_BN + 4];   // (k, n)
    const int tid = threadIdx.y * 16 + threadIdx.x, tx = threadIdx.x, ty = threadIdx.y;
    const Lanes al = lanes<T_BM, T_BK, T_THREADS>(tid, la.k_fast());
    const Lanes bl = lanes<T_BK, T_BN, T_THREADS>(tid, lb.n_fast());
    R ra[T_LOADS], rb[T_LOADS];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    if (!tiles.valid(kp)) return;

#define T_LOAD(kp_)                                                                               \
    la.load(ra, al, kp_);                                                                         \
    lb.load(rb, bl, kp_);
#define T_STORE(buf_)                                                                             \
    _Pragma("unroll") for (int l = 0; l < T_LOADS; ++l) {                                         \
        As[buf_][al.c0 + l * al.dc][al.r0 + l * al.dr] = E::to_f(ra[l]);                          \
        Bs[buf_][bl.r0 + l * bl.dr][bl.c0 + l * bl.dc] = E::to_f(rb[l]);                          \
    }

    T_LOAD(kp)
    T_STORE(0)
    __syncthreads();
    int buf = 0;
    while (true) {
        const KPos nk = tiles.next(kp);
        const bool more = tiles.valid(nk);
        if (more) { T_LOAD(nk) }                 // in flight during the math below
#pragma unroll
        for (int kk = 0; kk < T_BK; ++kk) {
            const float4 a = *reinterpret_cast<const float4*>(&As[buf][kk][ty * 4]);
            float b[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[buf][kk][tx + 16 * j];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                acc[0][j] += a.x * b[j];
                acc[1][j] += a.y * b[j];
                acc[2][j] += a.z * b[j];
                acc[3][j] += a.w * b[j];
            }
        }
        if (more) { T_STORE(buf ^ 1) }
        __syncthreads();
        if (!more) break;
        kp = nk;
        buf ^= 1;
    }
#undef T_LOAD
#undef T_STORE
}

// ------------------------------------------------------------------ "wide": 8x8 per thread SIMT

#define W_BM 128
#define W_BN 128
#define W_BK 16
#define W_THREADS 256
#define W_PAD 4                               // keeps rows 16-byte aligned for float4 reads
// Two blocks per SM where ptxas fits that without spills (sm_90: 126 registers, none spilled;
// sm_80 would spill in window_dw, so there ptxas picks, 128-134 registers).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define W_BOUNDS __launch_bounds__(W_THREADS, 2)
#else
#define W_BOUNDS __launch_bounds__(W_THREADS)
#endif
#define W_LOADS (W_BM * W_BK / W_THREADS)     // elements of A (and of B) each thread loads

// Row (column) of output i < 8 of thread t < 16 along one axis of the 128-tile: two 4-wide
// fragments 64 apart, so each is one float4 from shared memory and the 16 threads of a half
// warp read 16 consecutive float4 (no bank conflicts).
__device__ __forceinline__ int wide_at(int t, int i) { return (i >> 2) * 64 + t * 4 + (i & 3); }

// Double-buffered shared tiles: A's transposed, (k, m); B's (k, n).
typedef float WideTileA[2][W_BK][W_BM + W_PAD];
typedef float WideTileB[2][W_BK][W_BN + W_PAD];

// acc[i][j] = C(m0 + wide_at(ty, i), n0 + wide_at(tx, j)) over all k tiles of `tiles`.
// A_KF / B_NF: la.k_fast() / lb.n_fast() as template constants, so that the load and store
// offsets of the tile's elements fold into immediates (as run-time values they cost ~70
// registers more).
template <class E, bool A_KF, bool B_NF, class LA, class LB, class Tiles>
__device__ __forceinline__ void wide_mainloop(const LA& la, const LB& lb, const Tiles& tiles,
                                              KPos kp, float (&acc)[8][8], WideTileA& As,
                                              WideTileB& Bs) {
    typedef typename E::raw R;
    const int tid = threadIdx.y * 16 + threadIdx.x, tx = threadIdx.x, ty = threadIdx.y;
    const Lanes al = lanes<W_BM, W_BK, W_THREADS>(tid, A_KF);
    const Lanes bl = lanes<W_BK, W_BN, W_THREADS>(tid, B_NF);
    R ra[W_LOADS], rb[W_LOADS];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
    if (!tiles.valid(kp)) return;

#define W_LOAD(kp_)                                                                               \
    la.load(ra, al, kp_);                                                                         \
    lb.load(rb, bl, kp_);
#define W_STORE(buf_)                                                                             \
    _Pragma("unroll") for (int l = 0; l < W_LOADS; ++l) {                                         \
        As[buf_][al.c0 + l * al.dc][al.r0 + l * al.dr] = E::to_f(ra[l]);                          \
        Bs[buf_][bl.r0 + l * bl.dr][bl.c0 + l * bl.dc] = E::to_f(rb[l]);                          \
    }

    W_LOAD(kp)
    W_STORE(0)
    __syncthreads();
    int buf = 0;
    while (true) {
        const KPos nk = tiles.next(kp);
        const bool more = tiles.valid(nk);
        if (more) { W_LOAD(nk) }                 // in flight during the math below
#pragma unroll 2                 // fully unrolled: 151 registers on sm_90, one block per SM
        for (int kk = 0; kk < W_BK; ++kk) {
            const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][kk][ty * 4]);
            const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][kk][64 + ty * 4]);
            const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * 4]);
            const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][kk][64 + tx * 4]);
            const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
        }
        if (more) { W_STORE(buf ^ 1) }
        __syncthreads();
        if (!more) break;
        kp = nk;
        buf ^= 1;
    }
#undef W_LOAD
#undef W_STORE
}

// The shared tiles live here, not in wide_mainloop: each of its four instances would get its own.
template <class E, class LA, class LB, class Tiles>
__device__ __forceinline__ void wide_dispatch(const LA& la, const LB& lb, const Tiles& tiles,
                                              KPos kp, float (&acc)[8][8]) {
    __shared__ __align__(16) WideTileA As;
    __shared__ __align__(16) WideTileB Bs;
    if (la.k_fast()) {
        if (lb.n_fast()) wide_mainloop<E, true, true>(la, lb, tiles, kp, acc, As, Bs);
        else wide_mainloop<E, true, false>(la, lb, tiles, kp, acc, As, Bs);
    } else {
        if (lb.n_fast()) wide_mainloop<E, false, true>(la, lb, tiles, kp, acc, As, Bs);
        else wide_mainloop<E, false, false>(la, lb, tiles, kp, acc, As, Bs);
    }
}

// ------------------------------------------------------------------ "tensor": mma.sync

#define C_BM 64
#define C_BN 64
#define C_BK 32
#define C_THREADS 128
#define C_LOADS (C_BM * C_BK / C_THREADS)

// 16-bit inputs: raw bits staged as-is; float inputs (TF32): rounded to TF32 when staged.
template <class E> struct TcStage;
template <> struct TcStage<F16> {
    typedef u16 S;
    enum { PAD = 8, KSTEP = 16 };
    static __device__ __forceinline__ S put(u16 v) { return v; }
};
template <> struct TcStage<BF16> {
    typedef u16 S;
    enum { PAD = 8, KSTEP = 16 };
    static __device__ __forceinline__ S put(u16 v) { return v; }
};
template <> struct TcStage<F32> {
    typedef u32 S;
    enum { PAD = 4, KSTEP = 8 };
    static __device__ __forceinline__ S put(float v) { return f2tf32(v); }
};

__device__ __forceinline__ void mma_16816(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2],
                                          F16) {
    mma_f16(d, a, b);
}
__device__ __forceinline__ void mma_16816(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2],
                                          BF16) {
    mma_bf16(d, a, b);
}
__device__ __forceinline__ void mma_16816(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2],
                                          F32) {
    mma_tf32(d, a, b);
}

// Fragments of one k step (PTX ISA "matrix fragments for mma.m16n8k16 / m16n8k8"), with
// g = lane / 4, t = lane % 4, tile rows r, columns (B: n) c, k step start ks:
//   16-bit A: {(r+g, ks+2t..+1), (r+g+8, ks+2t..+1), (r+g, ks+2t+8..+9), (r+g+8, ks+2t+8..+9)}
//          B: {(ks+2t..+1, c+g), (ks+2t+8..+9, c+g)}
//   tf32   A: {(r+g, ks+t), (r+g+8, ks+t), (r+g, ks+t+4), (r+g+8, ks+t+4)}
//          B: {(ks+t, c+g), (ks+t+4, c+g)}
//   C (both): {(r+g, c+2t), (r+g, c+2t+1), (r+g+8, c+2t), (r+g+8, c+2t+1)}
// Shared tiles are (row, k) for A and (n, k) for B, so a 16-bit pair is one 32-bit word.
template <class E, typename S>
__device__ __forceinline__ void frag_a(u32 (&a)[4], const S* As, int ld, int r, int ks, int g,
                                       int t) {
    if (sizeof(S) == 2) {
        const u16* p = reinterpret_cast<const u16*>(As);
        a[0] = *reinterpret_cast<const u32*>(p + (r + g) * ld + ks + 2 * t);
        a[1] = *reinterpret_cast<const u32*>(p + (r + g + 8) * ld + ks + 2 * t);
        a[2] = *reinterpret_cast<const u32*>(p + (r + g) * ld + ks + 2 * t + 8);
        a[3] = *reinterpret_cast<const u32*>(p + (r + g + 8) * ld + ks + 2 * t + 8);
    } else {
        const u32* p = reinterpret_cast<const u32*>(As);
        a[0] = p[(r + g) * ld + ks + t];
        a[1] = p[(r + g + 8) * ld + ks + t];
        a[2] = p[(r + g) * ld + ks + t + 4];
        a[3] = p[(r + g + 8) * ld + ks + t + 4];
    }
}
template <class E, typename S>
__device__ __forceinline__ void frag_b(u32 (&b)[2], const S* Bs, int ld, int c, int ks, int g,
                                       int t) {
    if (sizeof(S) == 2) {
        const u16* p = reinterpret_cast<const u16*>(Bs);
        b[0] = *reinterpret_cast<const u32*>(p + (c + g) * ld + ks + 2 * t);
        b[1] = *reinterpret_cast<const u32*>(p + (c + g) * ld + ks + 2 * t + 8);
    } else {
        const u32* p = reinterpret_cast<const u32*>(Bs);
        b[0] = p[(c + g) * ld + ks + t];
        b[1] = p[(c + g) * ld + ks + t + 4];
    }
}

// acc[mi][ni][i] = C(m0 + wm*32 + mi*16 + g + 8*(i/2), n0 + wn*32 + ni*8 + 2t + i%2).
template <class E, class LA, class LB, class Tiles>
__device__ __forceinline__ void tc_mainloop(const LA& la, const LB& lb, const Tiles& tiles,
                                            KPos kp, float (&acc)[2][4][4]) {
    typedef typename E::raw R;
    typedef TcStage<E> St;
    typedef typename St::S S;
    enum { LD = C_BK + St::PAD };
    __shared__ __align__(16) S As[2][C_BM][LD];   // (m, k)
    __shared__ __align__(16) S Bs[2][C_BN][LD];   // (n, k)
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1, g = lane >> 2, t = lane & 3;
    const Lanes al = lanes<C_BM, C_BK, C_THREADS>(tid, la.k_fast());
    const Lanes bl = lanes<C_BK, C_BN, C_THREADS>(tid, lb.n_fast());
    R ra[C_LOADS], rb[C_LOADS];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.f;
    if (!tiles.valid(kp)) return;

#define C_LOAD(kp_)                                                                               \
    la.load(ra, al, kp_);                                                                         \
    lb.load(rb, bl, kp_);
#define C_STORE(buf_)                                                                             \
    _Pragma("unroll") for (int l = 0; l < C_LOADS; ++l) {                                         \
        As[buf_][al.r0 + l * al.dr][al.c0 + l * al.dc] = St::put(ra[l]);                          \
        Bs[buf_][bl.c0 + l * bl.dc][bl.r0 + l * bl.dr] = St::put(rb[l]);                          \
    }

    C_LOAD(kp)
    C_STORE(0)
    __syncthreads();
    int buf = 0;
    while (true) {
        const KPos nk = tiles.next(kp);
        const bool more = tiles.valid(nk);
        if (more) { C_LOAD(nk) }                 // in flight during the math below
#pragma unroll
        for (int ks = 0; ks < C_BK; ks += St::KSTEP) {
            u32 a[2][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
                frag_a<E, S>(a[mi], &As[buf][0][0], LD, wm * 32 + mi * 16, ks, g, t);
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
                frag_b<E, S>(b[ni], &Bs[buf][0][0], LD, wn * 32 + ni * 8, ks, g, t);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) mma_16816(acc[mi][ni], a[mi], b[ni], E());
        }
        if (more) { C_STORE(buf ^ 1) }
        __syncthreads();
        if (!more) break;
        kp = nk;
        buf ^= 1;
    }
#undef C_LOAD
#undef C_STORE
}

// ------------------------------------------------------------------ kernels

#define GEMM_ARGS                                                                                 \
    const long long *off, const long long *cnt, int mode, int m_full, int n_full, int k_full,      \
    long long a_g, long long a_o, long long a_rs, long long a_cs, long long b_g, long long b_o,    \
    long long b_rs, long long b_cs, long long c_g, long long c_o, long long c_rs, long long c_cs
#define GEMM_PASS off, cnt, mode, m_full, n_full, k_full, a_g, a_o, a_rs, a_cs, b_g, b_o, b_rs,   \
    b_cs, c_g, c_o, c_rs, c_cs
#define WDW_ARGS                                                                                  \
    const long long *off, const long long *cnt, int groups, int rows, int u_len, int v_len,        \
    long long q_g, long long q_b, long long p_g, long long p_b, long long dw_u, long long dw_v
#define WDW_PASS off, cnt, groups, rows, u_len, v_len, q_g, q_b, p_g, p_b, dw_u, dw_v

template <typename TC, class E> __device__ __forceinline__ void put_c(TC* p, float v, bool accum);
template <> __device__ __forceinline__ void put_c<float, F32>(float* p, float v, bool accum) {
    if (accum) atomicAdd(p, v); else *p = v;
}
template <> __device__ __forceinline__ void put_c<float, F16>(float* p, float v, bool) {
    atomicAdd(p, v);
}
template <> __device__ __forceinline__ void put_c<float, BF16>(float* p, float v, bool) {
    atomicAdd(p, v);
}
template <> __device__ __forceinline__ void put_c<u16, F16>(u16* p, float v, bool) {
    *p = F16::from_f(v);
}
template <> __device__ __forceinline__ void put_c<u16, BF16>(u16* p, float v, bool) {
    *p = BF16::from_f(v);
}

// The group's extents and operand views; false when the block has nothing to do.
struct GroupView {
    int M, N, K;
    long long o;
    int cnt;
};
__device__ __forceinline__ bool group_view(GroupView& v, const long long* off, const long long* cnt,
                                           int mode, int m_full, int n_full, int k_full, int bm,
                                           int bn) {
    const int g = blockIdx.z;
    v.cnt = (int)cnt[g];
    v.o = off[g];
    v.M = (mode & 1) ? v.cnt : m_full;
    v.N = (mode & 2) ? v.cnt : n_full;
    v.K = (mode & 4) ? v.cnt : k_full;
    return (int)blockIdx.y * bm < v.M && (int)blockIdx.x * bn < v.N && v.K > 0;
}

template <class E, typename TC, bool ACCUM>
__device__ void gemm_tiled(const typename E::raw* A, const typename E::raw* B, TC* C, GEMM_ARGS) {
    typedef typename E::raw R;
    GroupView v;
    if (!group_view(v, off, cnt, mode, m_full, n_full, k_full, T_BM, T_BN)) return;
    const int g = blockIdx.z, m0 = blockIdx.y * T_BM, n0 = blockIdx.x * T_BN;
    const GemmA<R> la{A + g * a_g + v.o * a_o, a_rs, a_cs, v.M, v.K, m0};
    const GemmB<R> lb{B + g * b_g + v.o * b_o, b_rs, b_cs, v.K, v.N, n0};
    const GroupedTiles<T_BK> tiles{v.K};
    float acc[4][4];
    tiled_mainloop<E>(la, lb, tiles, tiles.first(g, v.o, v.cnt), acc);
    TC* c = C + g * c_g + v.o * c_o;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int r = m0 + threadIdx.y * 4 + i, cc = n0 + threadIdx.x + 16 * j;
            if (r < v.M && cc < v.N) put_c<TC, E>(c + r * c_rs + cc * c_cs, acc[i][j], ACCUM);
        }
}

template <class E>
__device__ void window_dw_tiled(const typename E::raw* Q, const typename E::raw* P, float* dW,
                                WDW_ARGS) {
    typedef typename E::raw R;
    const int u0 = blockIdx.y * T_BM, v0 = blockIdx.x * T_BN;
    if (u0 >= u_len || v0 >= v_len) return;
    const WinA<R> la{Q, q_g, q_b, rows, u0};
    const WinB<R> lb{P, p_g, p_b, rows, v_len, v0};
    const WindowTiles<T_BK, T_BM> tiles{off, cnt, groups, rows, u0};
    float acc[4][4];
    const KPos first = tiles.first();
    if (!tiles.valid(first)) return;
    tiled_mainloop<E>(la, lb, tiles, first, acc);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int u = u0 + threadIdx.y * 4 + i, vv = v0 + threadIdx.x + 16 * j;
            if (u < u_len && vv < v_len) dW[u * dw_u + vv * dw_v] += acc[i][j];
        }
}

template <class E, typename TC, bool ACCUM>
__device__ void gemm_wide(const typename E::raw* A, const typename E::raw* B, TC* C, GEMM_ARGS) {
    typedef typename E::raw R;
    GroupView v;
    if (!group_view(v, off, cnt, mode, m_full, n_full, k_full, W_BM, W_BN)) return;
    const int g = blockIdx.z, m0 = blockIdx.y * W_BM, n0 = blockIdx.x * W_BN;
    const GemmA<R> la{A + g * a_g + v.o * a_o, a_rs, a_cs, v.M, v.K, m0};
    const GemmB<R> lb{B + g * b_g + v.o * b_o, b_rs, b_cs, v.K, v.N, n0};
    const GroupedTiles<W_BK> tiles{v.K};
    float acc[8][8];
    wide_dispatch<E>(la, lb, tiles, tiles.first(g, v.o, v.cnt), acc);
    TC* c = C + g * c_g + v.o * c_o;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int r = m0 + wide_at(threadIdx.y, i), cc = n0 + wide_at(threadIdx.x, j);
            if (r < v.M && cc < v.N) put_c<TC, E>(c + r * c_rs + cc * c_cs, acc[i][j], ACCUM);
        }
}

template <class E>
__device__ void window_dw_wide(const typename E::raw* Q, const typename E::raw* P, float* dW,
                               WDW_ARGS) {
    typedef typename E::raw R;
    const int u0 = blockIdx.y * W_BM, v0 = blockIdx.x * W_BN;
    if (u0 >= u_len || v0 >= v_len) return;
    const WinA<R> la{Q, q_g, q_b, rows, u0};
    const WinB<R> lb{P, p_g, p_b, rows, v_len, v0};
    const WindowTiles<W_BK, W_BM> tiles{off, cnt, groups, rows, u0};
    const KPos first = tiles.first();
    if (!tiles.valid(first)) return;
    float acc[8][8];
    wide_dispatch<E>(la, lb, tiles, first, acc);
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int u = u0 + wide_at(threadIdx.y, i), vv = v0 + wide_at(threadIdx.x, j);
            if (u < u_len && vv < v_len) dW[u * dw_u + vv * dw_v] += acc[i][j];
        }
}

template <class E, typename TC, bool ACCUM>
__device__ void gemm_tc(const typename E::raw* A, const typename E::raw* B, TC* C, GEMM_ARGS) {
    typedef typename E::raw R;
    GroupView v;
    if (!group_view(v, off, cnt, mode, m_full, n_full, k_full, C_BM, C_BN)) return;
    const int g = blockIdx.z, m0 = blockIdx.y * C_BM, n0 = blockIdx.x * C_BN;
    const GemmA<R> la{A + g * a_g + v.o * a_o, a_rs, a_cs, v.M, v.K, m0};
    const GemmB<R> lb{B + g * b_g + v.o * b_o, b_rs, b_cs, v.K, v.N, n0};
    const GroupedTiles<C_BK> tiles{v.K};
    float acc[2][4][4];
    tc_mainloop<E>(la, lb, tiles, tiles.first(g, v.o, v.cnt), acc);
    TC* c = C + g * c_g + v.o * c_o;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rb = m0 + (warp >> 1) * 32 + (lane >> 2), cb = n0 + (warp & 1) * 32 + 2 * (lane & 3);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = rb + mi * 16 + 8 * (i >> 1), cc = cb + ni * 8 + (i & 1);
                if (r < v.M && cc < v.N)
                    put_c<TC, E>(c + r * c_rs + cc * c_cs, acc[mi][ni][i], ACCUM);
            }
}

template <class E>
__device__ void window_dw_tc(const typename E::raw* Q, const typename E::raw* P, float* dW,
                             WDW_ARGS) {
    typedef typename E::raw R;
    const int u0 = blockIdx.y * C_BM, v0 = blockIdx.x * C_BN;
    if (u0 >= u_len || v0 >= v_len) return;
    const WinA<R> la{Q, q_g, q_b, rows, u0};
    const WinB<R> lb{P, p_g, p_b, rows, v_len, v0};
    const WindowTiles<C_BK, C_BM> tiles{off, cnt, groups, rows, u0};
    const KPos first = tiles.first();
    if (!tiles.valid(first)) return;
    float acc[2][4][4];
    tc_mainloop<E>(la, lb, tiles, first, acc);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ub = u0 + (warp >> 1) * 32 + (lane >> 2), vb = v0 + (warp & 1) * 32 + 2 * (lane & 3);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int u = ub + mi * 16 + 8 * (i >> 1), vv = vb + ni * 8 + (i & 1);
                if (u < u_len && vv < v_len) dW[u * dw_u + vv * dw_v] += acc[mi][ni][i];
            }
}

// "tiled": true FP32 math for every input type.
extern "C" __global__ void __launch_bounds__(T_THREADS)
gemm_tiled_f32(const float* A, const float* B, float* C, GEMM_ARGS) {
    gemm_tiled<F32, float, false>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(T_THREADS)
gemm_tiled_f16(const u16* A, const u16* B, u16* C, GEMM_ARGS) {
    gemm_tiled<F16, u16, false>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(T_THREADS)
gemm_tiled_bf16(const u16* A, const u16* B, u16* C, GEMM_ARGS) {
    gemm_tiled<BF16, u16, false>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(T_THREADS)
gemm_tiled_acc_f32(const float* A, const float* B, float* C, GEMM_ARGS) {
    gemm_tiled<F32, float, true>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(T_THREADS)
gemm_tiled_acc_f16(const u16* A, const u16* B, float* C, GEMM_ARGS) {
    gemm_tiled<F16, float, true>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(T_THREADS)
gemm_tiled_acc_bf16(const u16* A, const u16* B, float* C, GEMM_ARGS) {
    gemm_tiled<BF16, float, true>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(T_THREADS)
window_dw_tiled_f32(const float* Q, const float* P, float* dW, WDW_ARGS) {
    window_dw_tiled<F32>(Q, P, dW, WDW_PASS);
}
extern "C" __global__ void __launch_bounds__(T_THREADS)
window_dw_tiled_f16(const u16* Q, const u16* P, float* dW, WDW_ARGS) {
    window_dw_tiled<F16>(Q, P, dW, WDW_PASS);
}
extern "C" __global__ void __launch_bounds__(T_THREADS)
window_dw_tiled_bf16(const u16* Q, const u16* P, float* dW, WDW_ARGS) {
    window_dw_tiled<BF16>(Q, P, dW, WDW_PASS);
}

// "wide": true FP32 math for every input type, 128x128 tiles.
extern "C" __global__ void W_BOUNDS
gemm_wide_f32(const float* A, const float* B, float* C, GEMM_ARGS) {
    gemm_wide<F32, float, false>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void W_BOUNDS
gemm_wide_f16(const u16* A, const u16* B, u16* C, GEMM_ARGS) {
    gemm_wide<F16, u16, false>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void W_BOUNDS
gemm_wide_bf16(const u16* A, const u16* B, u16* C, GEMM_ARGS) {
    gemm_wide<BF16, u16, false>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void W_BOUNDS
gemm_wide_acc_f32(const float* A, const float* B, float* C, GEMM_ARGS) {
    gemm_wide<F32, float, true>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void W_BOUNDS
gemm_wide_acc_f16(const u16* A, const u16* B, float* C, GEMM_ARGS) {
    gemm_wide<F16, float, true>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void W_BOUNDS
gemm_wide_acc_bf16(const u16* A, const u16* B, float* C, GEMM_ARGS) {
    gemm_wide<BF16, float, true>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void W_BOUNDS
window_dw_wide_f32(const float* Q, const float* P, float* dW, WDW_ARGS) {
    window_dw_wide<F32>(Q, P, dW, WDW_PASS);
}
extern "C" __global__ void W_BOUNDS
window_dw_wide_f16(const u16* Q, const u16* P, float* dW, WDW_ARGS) {
    window_dw_wide<F16>(Q, P, dW, WDW_PASS);
}
extern "C" __global__ void W_BOUNDS
window_dw_wide_bf16(const u16* Q, const u16* P, float* dW, WDW_ARGS) {
    window_dw_wide<BF16>(Q, P, dW, WDW_PASS);
}

// "tensor": f16 / bf16 on the tensor cores; tf32 = float inputs rounded to TF32 (only when the
// user allowed TF32, torch.backends.cuda.matmul.allow_tf32).
extern "C" __global__ void __launch_bounds__(C_THREADS)
gemm_tc_f16(const u16* A, const u16* B, u16* C, GEMM_ARGS) {
    gemm_tc<F16, u16, false>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(C_THREADS)
gemm_tc_bf16(const u16* A, const u16* B, u16* C, GEMM_ARGS) {
    gemm_tc<BF16, u16, false>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(C_THREADS)
gemm_tc_tf32(const float* A, const float* B, float* C, GEMM_ARGS) {
    gemm_tc<F32, float, false>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(C_THREADS)
gemm_tc_acc_f16(const u16* A, const u16* B, float* C, GEMM_ARGS) {
    gemm_tc<F16, float, true>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(C_THREADS)
gemm_tc_acc_bf16(const u16* A, const u16* B, float* C, GEMM_ARGS) {
    gemm_tc<BF16, float, true>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(C_THREADS)
gemm_tc_acc_tf32(const float* A, const float* B, float* C, GEMM_ARGS) {
    gemm_tc<F32, float, true>(A, B, C, GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(C_THREADS)
window_dw_tc_f16(const u16* Q, const u16* P, float* dW, WDW_ARGS) {
    window_dw_tc<F16>(Q, P, dW, WDW_PASS);
}
extern "C" __global__ void __launch_bounds__(C_THREADS)
window_dw_tc_bf16(const u16* Q, const u16* P, float* dW, WDW_ARGS) {
    window_dw_tc<BF16>(Q, P, dW, WDW_PASS);
}
extern "C" __global__ void __launch_bounds__(C_THREADS)
window_dw_tc_tf32(const float* Q, const float* P, float* dW, WDW_ARGS) {
    window_dw_tc<F32>(Q, P, dW, WDW_PASS);
}
