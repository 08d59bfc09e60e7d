// onmt_sdrop/kernels/gemm_fast.cu compiled for the CPU, so that the tests run the kernels' own
// code (tiling, double buffering, fragment layouts, edge handling) on machines without a GPU.
//
// Each CUDA thread of a block is one std::thread; __syncthreads is a barrier of the block, and
// mma.sync is carried out per warp as the PTX ISA defines its fragments (each lane hands in its
// registers, a warp barrier, each lane reads back its part of D). __shared__ arrays become static
// (one block runs at a time). The PTX helpers of gemm_fast.cu are replaced by the ones below.
// Built by tests/test_cuda.py (g++ -shared); every kernel is exported as host_<name>(grid,
// block, kernel arguments). Slow: a few small shapes only.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static dim3 blockIdx, blockDim;
static thread_local dim3 threadIdx;
static std::unique_ptr<std::barrier<>> block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static std::mutex atomic_mutex;

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
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline float atomicAdd(float* p, float v) {
    std::lock_guard<std::mutex> lock(atomic_mutex);
    const float old = *p;
    *p = old + v;
    return old;
}

typedef unsigned short u16;
typedef unsigned int u32;

static inline float h2f(u16 v) { _Float16 h; std::memcpy(&h, &v, 2); return (float)h; }
static inline u16 f2h(float v) { _Float16 h = (_Float16)v; u16 r; std::memcpy(&r, &h, 2); return r; }
static inline u32 f2tf32(float v) { return (__float_as_uint(v) + 0x1000u) & ~0x1fffu; }

// One warp's mma: every lane deposits its fragments, then computes its own D elements.
struct WarpMma {
    float a[16][16], b[16][8], c[16][8];
};
static std::vector<WarpMma> warp_mma;

static inline float lo16(u32 r, bool bf) { return bf ? __uint_as_float(r << 16) : h2f((u16)(r & 0xffff)); }
static inline float hi16(u32 r, bool bf) { return bf ? __uint_as_float(r & 0xffff0000u) : h2f((u16)(r >> 16)); }

template <int KDIM, bool BF>
static void mma_emulated(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    WarpMma& w = warp_mma[warp];
    std::barrier<>& bar = *warp_barriers[warp];
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
        for (int i = 0; i < 4; ++i) w.a[g + ((i & 1) ? 8 : 0)][t + ((i & 2) ? 4 : 0)] = __uint_as_float(a[i]);
        for (int i = 0; i < 2; ++i) w.b[t + (i ? 4 : 0)][g] = __uint_as_float(b[i]);
    }
    for (int i = 0; i < 4; ++i) w.c[g + ((i & 2) ? 8 : 0)][2 * t + (i & 1)] = d[i];
    bar.arrive_and_wait();
    for (int i = 0; i < 4; ++i) {
        const int row = g + ((i & 2) ? 8 : 0), col = 2 * t + (i & 1);
        float s = w.c[row][col];
        for (int k = 0; k < KDIM; ++k) s += w.a[row][k] * w.b[k][col];
        d[i] = s;
    }
    bar.arrive_and_wait();   // nobody deposits the next mma's fragments before all have read
}
static inline void mma_f16(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) { mma_emulated<16, false>(d, a, b); }
static inline void mma_bf16(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) { mma_emulated<16, true>(d, a, b); }
static inline void mma_tf32(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) { mma_emulated<8, false>(d, a, b); }

#define SDROP_HOST_EMU 1
#include "../onmt_sdrop/kernels/gemm_fast.cu"

template <class F>
static void run_grid(int gx, int gy, int gz, int bx, int by, int bz, F kernel) {
    blockDim = dim3{(unsigned)bx, (unsigned)by, (unsigned)bz};
    const int threads = bx * by * bz;
    for (int z = 0; z < gz; ++z)
        for (int y = 0; y < gy; ++y)
            for (int x = 0; x < gx; ++x) {
                blockIdx = dim3{(unsigned)x, (unsigned)y, (unsigned)z};
                block_barrier = std::make_unique<std::barrier<>>(threads);
                warp_barriers.clear();
                for (int w = 0; w < (threads + 31) / 32; ++w)
                    warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * w)));
                warp_mma.assign((threads + 31) / 32, WarpMma{});
                std::vector<std::thread> pool;
                for (int tz = 0; tz < bz; ++tz)
                    for (int ty = 0; ty < by; ++ty)
                        for (int tx = 0; tx < bx; ++tx)
                            pool.emplace_back([=] {
                                threadIdx = dim3{(unsigned)tx, (unsigned)ty, (unsigned)tz};
                                kernel();
                            });
                for (auto& th : pool) th.join();
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
EXPORT_GEMM(gemm_tc_f16, u16, u16)
EXPORT_GEMM(gemm_tc_bf16, u16, u16)
EXPORT_GEMM(gemm_tc_tf32, float, float)
EXPORT_GEMM(gemm_tc_acc_f16, u16, float)
EXPORT_GEMM(gemm_tc_acc_bf16, u16, float)
EXPORT_GEMM(gemm_tc_acc_tf32, float, float)
EXPORT_WDW(window_dw_tc_f16, u16)
EXPORT_WDW(window_dw_tc_bf16, u16)
EXPORT_WDW(window_dw_tc_tf32, float)
