// Where a CTA's query rows come from, how far each may look, and which KV tiles its split owns.
#pragma once

#include <cuda.h>

#include "../config.cuh"

namespace mla {

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

constexpr float LN2 = 0.6931471805599453f;

// Which q / out rows a CTA's query rows are: known from the launch alone, before any read.
struct RowIndex {
  int row_tile;
  int rows_per_request;
  int num_heads;
  int query_len;

  __device__ __forceinline__ bool valid(int row_local, int rows) const {
    return row_tile * rows + row_local < rows_per_request;
  }
  // (token, head) of a row of the tile: token indexes q / out rows, head their second dim.
  __device__ __forceinline__ int64_t token(int b, int row_local, int rows) const {
    return static_cast<int64_t>(b) * query_len + (row_tile * rows + row_local) / num_heads;
  }
  __device__ __forceinline__ int head(int row_local, int rows) const {
    return (row_tile * rows + row_local) % num_heads;
  }
};

// ... and how far each row may look, once the request's length is read.
struct RowGeometry : RowIndex {
  int seq_len;  // as given (used by the causal offset)
  int kv_len;   // seq_len clamped to the block table
  bool causal;

  // Number of KV tokens the row may attend to (padding rows: kv_len, their output is dropped).
  __device__ __forceinline__ int limit(int row_local, int rows) const {
    const int rg = row_tile * rows + row_local;
    if (rg >= rows_per_request || !causal) return kv_len;
    const int t = rg / num_heads;
    return max(0, min(kv_len, seq_len - query_len + 1 + t));
  }
};

// The KV tiles [begin, end) of one split. Every split gets at least min_tiles tiles of the
// request's real length, so a plan with more splits than the request needs (vLLM captures its
// CUDA graphs at max_model_len) leaves the extra splits empty: they exit before any load.
struct SplitRange {
  int begin, end;
  __device__ __forceinline__ bool empty() const { return begin >= end; }
};

__device__ __forceinline__ int tiles_per_split(int n_tiles, int num_splits, int min_tiles) {
  return max(min_tiles, ceil_div(n_tiles, num_splits));
}

__device__ __forceinline__ SplitRange split_range(int n_tiles, int num_splits, int min_tiles, int split) {
  const int per_split = tiles_per_split(n_tiles, num_splits, min_tiles);
  const int begin = split * per_split;
  return {begin, min(n_tiles, begin + per_split)};
}

// How many of the splits split_range gives tokens (the first ones; the rest are empty).
__device__ __forceinline__ int splits_with_tokens(int n_tiles, int num_splits, int min_tiles) {
  return min(num_splits, ceil_div(n_tiles, tiles_per_split(n_tiles, num_splits, min_tiles)));
}

}  // namespace mla
