// mma.sync BF16 throughput probe (the benchmark's compute roofline): independent m16n8k16
// accumulators per warp, operands in registers, so nothing but the tensor pipe is timed.
#include "launch.h"
#include "ptx.cuh"

namespace mla {
namespace {
constexpr int PEAK_THREADS = 256;
constexpr int PEAK_CHAINS = 8;

__global__ void __launch_bounds__(PEAK_THREADS) mma_peak_kernel(float* sink, int iterations) {
  uint32_t a[4];
  for (int i = 0; i < 4; ++i) a[i] = 0x3c003c00u ^ (threadIdx.x * 0x00010001u * (i + 1));
  const uint32_t b0 = a[0] ^ 0x00400040u, b1 = a[1] ^ 0x00200020u;
  float d[PEAK_CHAINS][4] = {};
  for (int it = 0; it < iterations; ++it) {
#pragma unroll
    for (int c = 0; c < PEAK_CHAINS; ++c) mma_bf16_16816(d[c], a, b0, b1);
  }
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < PEAK_CHAINS; ++c) s += d[c][0] + d[c][1] + d[c][2] + d[c][3];
  sink[blockIdx.x * PEAK_THREADS + threadIdx.x] = s;
}
}  // namespace

std::string launch_mma_peak(float* sink, int blocks, int iterations, cudaStream_t stream) {
  mma_peak_kernel<<<blocks, PEAK_THREADS, 0, stream>>>(sink, iterations);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string("mma peak launch: ") + cudaGetErrorString(err);
}

}  // namespace mla
