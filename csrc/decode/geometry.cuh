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

// KV tiles of a request of `len` tokens, clamped to the block table's capacity.
__device__ __forceinline__ int request_tiles(int len, int kv_capacity, int tokens_per_tile) {
  return ceil_div(max(0, min(len, kv_capacity)), tokens_per_tile);
}

// Length-balanced splits. With a split budget (the plan's splits per request x the batch), a
// split takes at least ceil(the batch's tiles / budget) tiles: a ragged batch's long requests get
// more splits than the plan's per-request count (up to num_splits, the per-request cap) and its
// short ones fewer, so the CTAs with tokens do about equal work; a batch of equal lengths gets
// exactly the per-request split of a budget-free launch. Budget 0: min_tiles alone. Every lane
// of the calling warp must be here (a warp sum over the batch's lengths).
__device__ __forceinline__ int balanced_min_tiles(const int32_t* __restrict__ seq_lens, int batch, int kv_capacity,
                                                  int tokens_per_tile, int min_tiles, int split_budget) {
  if (split_budget <= 0) return min_tiles;
  // The trip count is the same in every lane (no divergence: the tile loop's ldmatrix then needs
  // no warpsync); lanes past the batch add nothing.
  const int lane = static_cast<int>(threadIdx.x % 32);
  int tiles = 0;
#pragma unroll 4
  for (int r0 = 0; r0 < batch; r0 += 32) {
    const int len = r0 + lane < batch ? __ldg(seq_lens + r0 + lane) : 0;
    tiles += request_tiles(len, kv_capacity, tokens_per_tile);
  }
  // redux.sync's result is warp-uniform (a uniform register): the split range, and so the tile
  // loop's trip count, stay uniform as they were with min_tiles alone (a shuffle sum was not,
  // and put a warpsync before the loop's ldmatrix).
  tiles = static_cast<int>(__reduce_add_sync(0xffffffffu, static_cast<unsigned>(tiles)));
  return max(min_tiles, ceil_div(tiles, split_budget));
}

// How many of the splits split_range gives tokens (the first ones; the rest are empty).
__device__ __forceinline__ int splits_with_tokens(int n_tiles, int num_splits, int min_tiles) {
  return min(num_splits, ceil_div(n_tiles, tiles_per_split(n_tiles, num_splits, min_tiles)));
}

// Which (request, split) a CTA of a balanced launch is. The launch has split_budget + batch CTAs
// per row tile (blockIdx.y = slot), enough for every request's splits with tokens, and at least
// one for an empty request (it writes the empty rows): the slots are the requests' splits laid
// end to end, so no CTA is spent on a split without tokens except the few slots past the end
// (request -1), which exit at once. (A grid of num_splits CTAs per request had the extra splits
// of every request interleaved with the others' splits, and the block scheduler started the last
// splits with tokens only after rounds of exits: FP8 B32 H16 4k 33.8 -> 46.4 us.)
struct BalancedSlot {
  int b, split, min_tiles;
};

__device__ __forceinline__ BalancedSlot balanced_slot(const int32_t* __restrict__ seq_lens, int batch, int kv_capacity,
                                                      int tokens_per_tile, int min_tiles, int split_budget,
                                                      int num_splits, int slot) {
  const int q = balanced_min_tiles(seq_lens, batch, kv_capacity, tokens_per_tile, min_tiles, split_budget);
  const int lane = static_cast<int>(threadIdx.x % 32);
  // Walk the batch 32 requests at a time: each lane one request's slot count, a warp scan, and
  // the lane whose slots hold `slot`. redux.sync keeps every result warp-uniform. No early exit:
  // the unrolled loop issues its loads together (one round trip up to 128 requests).
  int base = 0, b = -1, split = 0;
#pragma unroll 4
  for (int r0 = 0; r0 < batch; r0 += 32) {
    const int r = r0 + lane;
    const int len = r < batch ? __ldg(seq_lens + r) : 0;
    const int n_tiles = request_tiles(len, kv_capacity, tokens_per_tile);
    const int slots = r < batch ? max(1, splits_with_tokens(n_tiles, num_splits, q)) : 0;
    int end = slots;  // inclusive scan: the slots up to and with this lane's request
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const int v = __shfl_up_sync(0xffffffffu, end, off);
      if (lane >= off) end += v;
    }
    const bool mine = slots > 0 && base + end > slot && base + end - slots <= slot;
    if (__reduce_or_sync(0xffffffffu, mine ? 1u : 0u)) {  // one lane of one chunk holds the slot
      b = static_cast<int>(__reduce_min_sync(0xffffffffu, mine ? static_cast<unsigned>(r) : 0xffffffffu));
      split = static_cast<int>(
          __reduce_add_sync(0xffffffffu, mine ? static_cast<unsigned>(slot - (base + end - slots)) : 0u));
    }
    base += static_cast<int>(__reduce_add_sync(0xffffffffu, static_cast<unsigned>(slots)));
  }
  return {b, split, q};
}

}  // namespace mla
