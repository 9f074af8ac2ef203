"""Capture conditions: what each contender is told about the batch when it plans its launch
(pure Python).

Both our op and TRITON_MLA plan from one host-side number, `max_seq_len`: ours picks its
split-KV plan from it, TRITON_MLA its `num_kv_splits` (vLLM's `_compute_num_kv_splits`, and
the size of its attn_logits scratch).

- eager: the hint is the batch's own longest request, max(seq_lens): what vLLM passes when a
  decode step runs outside a CUDA graph.
- graph: the hint is max_model_len. vLLM 0.33 serves decode from full CUDA graphs and captures
  them with `attn_metadata.max_seq_len = max_model_len` (vllm/v1/worker/gpu_model_runner.py,
  `_build_attention_metadata`, `for_cudagraph_capture`); the launch captured then is replayed
  for every later step, and only device tensors (block_table, seq_lens) change. The bench
  captures each contender planned for max_model_len and replays it on the shape's real lengths.

Both modes are timed the same way (CUDA-graph replays, L2 flushed): the difference between
them is the plan, not the launch cost.
"""

from __future__ import annotations

MODES = ("eager", "graph")
MODE_CHOICES = ("eager", "graph", "both")
DEFAULT_MODE = "both"
DEFAULT_MAX_MODEL_LEN = 131072  # DeepSeek-V3/R1's context; vLLM's max_model_len for them


def parse_modes(text: str) -> tuple[str, ...]:
    """'eager' -> ('eager',), 'graph' -> ('graph',), 'both' -> ('eager', 'graph')."""
    key = (text or "").strip().lower()
    if key == "both":
        return MODES
    if key in MODES:
        return (key,)
    raise ValueError(f"--mode: {text!r} is not one of {', '.join(MODE_CHOICES)}")


def check_max_model_len(max_model_len: int, longest_context: int, modes) -> int:
    """max_model_len must hold every request: vLLM never schedules one longer."""
    if max_model_len < 1:
        raise ValueError(f"--max-model-len: {max_model_len} must be at least 1")
    if "graph" in modes and max_model_len < longest_context:
        raise ValueError(f"--max-model-len: {max_model_len} is shorter than the longest --context "
                         f"({longest_context}); vLLM never holds a request longer than max_model_len")
    return max_model_len


def planning_max_seq_len(mode: str, seq_lens, max_model_len: int) -> int:
    """The max_seq_len both contenders plan from in `mode`, for a batch of `seq_lens`."""
    if mode == "eager":
        return max(seq_lens)
    if mode == "graph":
        return max_model_len
    raise ValueError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")


def describe(mode: str, max_model_len: int) -> str:
    if mode == "eager":
        return "eager: both contenders plan from the batch's own longest request (max(seq_lens))"
    return (f"graph: both contenders planned for max_seq_len = max_model_len = {max_model_len} "
            f"(as vLLM 0.33 captures full CUDA graphs), then replayed on the shape's real lengths")
