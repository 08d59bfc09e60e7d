// Fused LSTM point-wise step, forward and backward (gate order i, f, g, o as nn.LSTM).
//
// Forward, per (direction, batch, unit): gates = gx[t] + h_{t-1} W_hh^T (computed by cuBLAS
// before this kernel) -> activations, c_t, h_t, masked by `valid` (padding keeps the state and
// outputs zero). Saves the activations and the new cell for the backward kernel.
// Backward: the BPTT point-wise part; dh_prev = dgates W_hh is again one cuBLAS GEMM per step.
// Tensors are float, half or bfloat16 (_f32 / _f16 / _bf16), math in float; dh, dc are float.
#include <cuda_fp16.h>

__device__ __forceinline__ float sigm(float x) { return 1.f / (1.f + __expf(-x)); }

template <typename T> __device__ __forceinline__ float ld(const T* p, long long i);
template <> __device__ __forceinline__ float ld<float>(const float* p, long long i) { return p[i]; }
template <> __device__ __forceinline__ float ld<__half>(const __half* p, long long i) {
    return __half2float(p[i]);
}
struct bf16 { unsigned short bits; };   // bfloat16 as its raw bits (no header needed)
template <> __device__ __forceinline__ float ld<bf16>(const bf16* p, long long i) {
    return __uint_as_float(((unsigned int)p[i].bits) << 16);
}
template <typename T> __device__ __forceinline__ void st(T* p, long long i, float v);
template <> __device__ __forceinline__ void st<float>(float* p, long long i, float v) { p[i] = v; }
template <> __device__ __forceinline__ void st<__half>(__half* p, long long i, float v) {
    p[i] = __float2half(v);
}
template <> __device__ __forceinline__ void st<bf16>(bf16* p, long long i, float v) {
    unsigned int u = __float_as_uint(v);   // round to nearest even, NaN stays NaN
    u = ((u & 0x7fffffffu) > 0x7f800000u) ? 0x7fc00000u : u + 0x7fffu + ((u >> 16) & 1u);
    p[i].bits = (unsigned short)(u >> 16);
}

// gates (R, 4h) with R = D*B rows; c_prev, h_prev (R, h); valid (R) or null.
// Outputs: acts (R, 4h), c_new (R, h), h (R, h) next state, out (R, h).
template <typename T>
__device__ void lstm_fwd(const T* gates, const T* c_prev, const T* h_prev, const unsigned char* valid,
                         T* acts, T* c_new, T* c_next, T* h_next, T* out, int rows, int h) {
    long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (idx >= (long long)rows * h) return;
    const long long r = idx / h, u = idx % h, base = r * 4LL * h;
    const float i = sigm(ld(gates, base + u));
    const float f = sigm(ld(gates, base + h + u));
    const float g = tanhf(ld(gates, base + 2 * h + u));
    const float o = sigm(ld(gates, base + 3 * h + u));
    const float cp = ld(c_prev, idx);
    const float c = f * cp + i * g;
    const float hn = o * tanhf(c);
    st(acts, base + u, i);
    st(acts, base + h + u, f);
    st(acts, base + 2 * h + u, g);
    st(acts, base + 3 * h + u, o);
    st(c_new, idx, c);
    const bool v = valid == nullptr || valid[r];
    st(c_next, idx, v ? c : cp);
    st(h_next, idx, v ? hn : ld(h_prev, idx));
    st(out, idx, v ? hn : 0.f);
}

// dh, dc: gradients w.r.t. h_t, c_t (state after the step, updated in place to the gradients
// w.r.t. h_{t-1} (carry part only) and c_{t-1}); d_out: gradient of the step's output.
template <typename T>
__device__ void lstm_bwd(const T* acts, const T* c_new, const T* c_prev, const unsigned char* valid,
                         const T* d_out, float* dh, float* dc, T* dgates, int rows, int h) {
    long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (idx >= (long long)rows * h) return;
    const long long r = idx / h, u = idx % h, base = r * 4LL * h;
    const float i = ld(acts, base + u), f = ld(acts, base + h + u);
    const float g = ld(acts, base + 2 * h + u), o = ld(acts, base + 3 * h + u);
    const float tc = tanhf(ld(c_new, idx));
    const float v = (valid == nullptr || valid[r]) ? 1.f : 0.f;
    const float dho = dh[idx], dco = dc[idx];
    const float dhn = v * (dho + (d_out ? ld(d_out, idx) : 0.f));
    const float dcn = v * dco + dhn * o * (1.f - tc * tc);
    st(dgates, base + u, dcn * g * i * (1.f - i));
    st(dgates, base + h + u, dcn * ld(c_prev, idx) * f * (1.f - f));
    st(dgates, base + 2 * h + u, dcn * i * (1.f - g * g));
    st(dgates, base + 3 * h + u, dhn * tc * o * (1.f - o));
    dc[idx] = dcn * f + (1.f - v) * dco;
    dh[idx] = (1.f - v) * dho;  // + dgates W_hh, added by the caller's GEMM
}

#define FWD_ARGS(T) const T *gates, const T *c_prev, const T *h_prev, const unsigned char *valid, \
    T *acts, T *c_new, T *c_next, T *h_next, T *out, int rows, int h
#define BWD_ARGS(T) const T *acts, const T *c_new, const T *c_prev, const unsigned char *valid, \
    const T *d_out, float *dh, float *dc, T *dgates, int rows, int h

extern "C" __global__ void lstm_fwd_f32(FWD_ARGS(float)) {
    lstm_fwd<float>(gates, c_prev, h_prev, valid, acts, c_new, c_next, h_next, out, rows, h);
}
extern "C" __global__ void lstm_fwd_f16(FWD_ARGS(__half)) {
    lstm_fwd<__half>(gates, c_prev, h_prev, valid, acts, c_new, c_next, h_next, out, rows, h);
}
extern "C" __global__ void lstm_bwd_f32(BWD_ARGS(float)) {
    lstm_bwd<float>(acts, c_new, c_prev, valid, d_out, dh, dc, dgates, rows, h);
}
extern "C" __global__ void lstm_bwd_f16(BWD_ARGS(__half)) {
    lstm_bwd<__half>(acts, c_new, c_prev, valid, d_out, dh, dc, dgates, rows, h);
}
extern "C" __global__ void lstm_fwd_bf16(FWD_ARGS(bf16)) {
    lstm_fwd<bf16>(gates, c_prev, h_prev, valid, acts, c_new, c_next, h_next, out, rows, h);
}
extern "C" __global__ void lstm_bwd_bf16(BWD_ARGS(bf16)) {
    lstm_bwd<bf16>(acts, c_new, c_prev, valid, d_out, dh, dc, dgates, rows, h);
}
