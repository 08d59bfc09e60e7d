// onmt_sdrop/kernels/gemm_fast.cu compiled for the CPU, so that the tests run the kernels' own
// code (tiling, double buffering, fragment layouts, edge handling) on machines without a GPU.
//
// Each CUDA thread of a block is a fiber (ucontext) and the block's fibers run round-robin, each
// until its next barrier: since every thread of a block meets the same barriers in the same
// order (the kernels' control flow around barriers is block-uniform), round r ends with every
// thread at its r-th barrier, which is what __syncthreads and the warp barriers of mma.sync
// need. mma.sync is carried out per warp as the PTX ISA defines its fragments (each lane hands
// in its registers, a barrier, each lane reads back its part of D). __shared__ arrays become
// static (one block runs at a time). The PTX helpers of gemm_fast.cu are replaced below.
// Built by tests/test_cuda.py (g++ -shared); every kernel is exported as host_<name>(grid,
// block, kernel arguments). Slow: a few small shapes only.
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static dim3 blockIdx, blockDim, threadIdx;   // threadIdx: of the fiber running now

struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    dim3 tid;
    bool done;
};
static std::vector<Fiber> fibers;
static ucontext_t scheduler;
static int running;
static std::function<void()> fiber_kernel;

static void barrier() {   // to the end of this round
    swapcontext(&fibers[running].ctx, &scheduler);
}
static void fiber_main() {
    fiber_kernel();
    fibers[running].done = true;
}

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)
#define __restrict__
#define __align__(n) __attribute__((aligned(n)))

struct alignas(16) float4 {
    float x, y, z, w;
};
static inline void __syncthreads() { barrier(); }
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline float atomicAdd(float* p, float v) {   // fibers of one OS thread: no race
    const float old = *p;
    *p = old + v;
    return old;
}

typedef unsigned short u16;
typedef unsigned int u32;

static inline float h2f(u16 v) { _Float16 h; std::memcpy(&h, &v, 2); return (float)h; }
static inline u16 f2h(float v) {
    _Float16 h = (_Float16)v;
    u16 r;
    std::memcpy(&r, &h, 2);
    return r;
}
static inline u32 f2tf32(float v) { return (__float_as_uint(v) + 0x1000u) & ~0x1fffu; }

// One warp's mma: every lane deposits its fragments, then computes its own D elements.
struct WarpMma {
    float a[16][16], b[16][8], c[16][8];
};
static std::vector<WarpMma> warp_mma;

// the lower / upper 16-bit element of a register (the lower has the smaller index)
static inline float lo16(u32 r, bool bf) {
    return bf ? __uint_as_float(r << 16) : h2f((u16)(r & 0xffff));
}
static inline float hi16(u32 r, bool bf) {
    return bf ? __uint_as_float(r & 0xffff0000u) : h2f((u16)(r >> 16));
}

template <int KDIM, bool BF>
static void mma_emulated(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    WarpMma& w = warp_mma[warp];
    if (KDIM == 16) {   // f16 / bf16: pairs of k per register, low half first
        for (int i = 0; i < 4; ++i) {
            const int row = g + ((i & 1) ? 8 : 0), col = 2 * t + ((i & 2) ? 8 : 0);
            w.a[row][col] = lo16(a[i], BF);
            w.a[row][col + 1] = hi16(a[i], BF);
        }
        for (int i = 0; i < 2; ++i) {
            const int k = 2 * t + (i ? 8 : 0);
            w.b[k][g] = lo16(b[i], BF);
            w.b[k + 1][g] = hi16(b[i], BF);
        }
    } else {            // tf32
        for (int i = 0; i < 4; ++i)
            w.a[g + ((i & 1) ? 8 : 0)][t + ((i & 2) ? 4 : 0)] = __uint_as_float(a[i]);
        for (int i = 0; i < 2; ++i) w.b[t + (i ? 4 : 0)][g] = __uint_as_float(b[i]);
    }
    for (int i = 0; i < 4; ++i) w.c[g + ((i & 2) ? 8 : 0)][2 * t + (i & 1)] = d[i];
    barrier();               // the whole block waits too: harmless, every warp runs this mma
    for (int i = 0; i < 4; ++i) {
        const int row = g + ((i & 2) ? 8 : 0), col = 2 * t + (i & 1);
        float s = w.c[row][col];
        for (int k = 0; k < KDIM; ++k) s += w.a[row][k] * w.b[k][col];
        d[i] = s;
    }
    barrier();               // nobody deposits the next mma's fragments before all have read
}
static inline void mma_f16(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    mma_emulated<16, false>(d, a, b);
}
static inline void mma_bf16(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    mma_emulated<16, true>(d, a, b);
}
static inline void mma_tf32(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    mma_emulated<8, false>(d, a, b);
}

#define SDROP_HOST_EMU 1
#include "../onmt_sdrop/kernels/gemm_fast.cu"

template <class F>
static void run_grid(int gx, int gy, int gz, int bx, int by, int bz, F kernel) {
    blockDim = dim3{(unsigned)bx, (unsigned)by, (unsigned)bz};
    const int threads = bx * by * bz;
    fibers.resize(threads);
    fiber_kernel = kernel;
    for (int z = 0; z < gz; ++z)
        for (int y = 0; y < gy; ++y)
            for (int x = 0; x < gx; ++x) {
                blockIdx = dim3{(unsigned)x, (unsigned)y, (unsigned)z};
                warp_mma.assign((threads + 31) / 32, WarpMma{});
                for (int t = 0; t < threads; ++t) {
                    Fiber& f = fibers[t];
                    f.stack.resize(1 << 16);
                    f.tid = dim3{(unsigned)(t % bx), (unsigned)(t / bx % by),
                                 (unsigned)(t / (bx * by))};
                    f.done = false;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = &scheduler;
                    makecontext(&f.ctx, fiber_main, 0);
                }
                // one round: every fiber to its next barrier; odd rounds in reverse order, so a
                // missing barrier shows whichever thread writes and whichever reads
                for (int round = 0, more = 1; more; ++round) {
                    more = 0;
                    for (int i = 0; i < threads; ++i) {
                        const int t = (round & 1) ? threads - 1 - i : i;
                        if (fibers[t].done) continue;
                        running = t;
                        threadIdx = fibers[t].tid;
                        swapcontext(&scheduler, &fibers[t].ctx);
                        more = more || !fibers[t].done;
                    }
                }
            }
}

#define LAUNCH_ARGS int gx, int gy, int gz, int bx, int by, int bz
#define EXPORT_GEMM(name, TA, TC)                                                                 \
    extern "C" void host_##name(LAUNCH_ARGS, const TA* A, const TA* B, TC* C, GEMM_ARGS) {        \
        run_grid(gx, gy, gz, bx, by, bz, [=] { name(A, B, C, GEMM_PASS); });                      \
    }
#define EXPORT_WDW(name, T)                                                                       \
    extern "C" void host_##name(LAUNCH_ARGS, const T* Q, const T* P, float* dW, WDW_ARGS) {       \
        run_grid(gx, gy, gz, bx, by, bz, [=] { name(Q, P, dW, WDW_PASS); });                      \
    }

EXPORT_GEMM(gemm_tiled_f32, float, float)
EXPORT_GEMM(gemm_tiled_f16, u16, u16)
EXPORT_GEMM(gemm_tiled_bf16, u16, u16)
EXPORT_GEMM(gemm_tiled_acc_f32, float, float)
EXPORT_GEMM(gemm_tiled_acc_f16, u16, float)
EXPORT_GEMM(gemm_tiled_acc_bf16, u16, float)
EXPORT_WDW(window_dw_tiled_f32, float)
EXPORT_WDW(window_dw_tiled_f16, u16)
EXPORT_WDW(window_dw_tiled_bf16, u16)
EXPORT_GEMM(gemm_wide_f32, float, float)
EXPORT_GEMM(gemm_wide_f16, u16, u16)
EXPORT_GEMM(gemm_wide_bf16, u16, u16)
EXPORT_GEMM(gemm_wide_acc_f32, float, float)
EXPORT_GEMM(gemm_wide_acc_f16, u16, float)
EXPORT_GEMM(gemm_wide_acc_bf16, u16, float)
EXPORT_WDW(window_dw_wide_f32, float)
EXPORT_WDW(window_dw_wide_f16, u16)
EXPORT_WDW(window_dw_wide_bf16, u16)
EXPORT_GEMM(gemm_tc_f16, u16, u16)
EXPORT_GEMM(gemm_tc_bf16, u16, u16)
EXPORT_GEMM(gemm_tc_tf32, float, float)
EXPORT_GEMM(gemm_tc_acc_f16, u16, float)
EXPORT_GEMM(gemm_tc_acc_bf16, u16, float)
EXPORT_GEMM(gemm_tc_acc_tf32, float, float)
EXPORT_WDW(window_dw_tc_f16, u16)
EXPORT_WDW(window_dw_tc_bf16, u16)
EXPORT_WDW(window_dw_tc_tf32, float)
