"""The contenders: our mla_decode, vLLM's TRITON_MLA decode kernel, and the fp32 reference,
each found, loaded and set up to run on a shape's inputs.

TRITON_MLA is called exactly as vLLM's TritonMLAImpl.forward_mqa calls
decode_attention_fwd (vllm/v1/attention/backends/mla/triton_mla.py, vLLM 0.33): one q
tensor [T, H, 576], o [T, H, 512] and lse [T, H] in q's dtype, attn_logits
[T, H, num_kv_splits, 513] fp32, the cache unsqueezed to [blocks, page, 1, 576] with
kv_c = cache[..., :512], k_scale = v_scale = a 1-element fp32 tensor, is_mla=True; for
query_len > 1 the block table and per-row causal seq_lens expanded to one row per
query token. forward_mqa's per-call allocations and that expansion are done once,
outside the timed call: its time is the kernel's alone (as ours is, given out and lse).

Both contenders plan from one host-side `max_seq_len` (bench/modes.py): ours receives it
as the op's hint, TRITON_MLA's num_kv_splits (and its attn_logits) follow from it as in
forward_mqa. Left out, it is the batch's own longest request (the eager case).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

from mla_plugin.bench import residency
from mla_plugin.bench.grid import Shape
from mla_plugin.bench.inputs import DecodeInputs
from mla_plugin.bench.roofline import KV_DIM, V_DIM

VLLM_TRITON_MODULE = "vllm.v1.attention.ops.triton_decode_attention"
PEER_TRITON_MODULE = "triton_decode_attention"  # the file fetch-triton-mla writes
DEFAULT_TRITON_PATH = os.path.join(".peers", "triton_mla")

# vLLM's _compute_num_kv_splits constants
_MIN_WORK_PER_SPLIT = 512
_SPLIT_OCCUPANCY_MULTIPLIER = 2


class KernelUnavailable(RuntimeError):
    """A contender cannot be loaded; the message says why and what to do."""


@dataclass
class PreparedCall:
    """One kernel set up on one shape's inputs: run() writes out and lse in place."""
    name: str
    run: Callable[[], None]
    out: torch.Tensor
    lse: torch.Tensor
    plan: dict = field(default_factory=dict)  # what it was told: max_seq_len, num_kv_splits

    def poison_outputs(self) -> None:
        """Fill out and lse with NaN, so that a kernel that leaves rows unwritten fails the check."""
        self.out.fill_(float("nan"))
        self.lse.fill_(float("nan"))


def load_ours() -> Callable:
    try:
        from mla_plugin.ops import mla_decode
    except ImportError as exc:
        raise KernelUnavailable(f"our op cannot be imported (mla_plugin.ops.mla_decode): {exc}; "
                                "pass --no-ours to time TRITON_MLA alone") from exc
    return mla_decode


def load_reference() -> Callable:
    try:
        from mla_plugin.reference import mla_decode_reference
    except ImportError as exc:
        raise KernelUnavailable(
            f"the fp32 reference cannot be imported (mla_plugin.reference.mla_decode_reference): {exc}") from exc
    return mla_decode_reference


def load_triton_mla(path: str = DEFAULT_TRITON_PATH, prefer_vllm: bool = True) -> tuple[Callable, str]:
    """decode_attention_fwd from vLLM when it imports, else from the folder written by
    shared/tools/fetch-triton-mla. Returns (function, where it came from)."""
    errors = []
    if prefer_vllm:
        try:
            module = importlib.import_module(VLLM_TRITON_MODULE)
            return module.decode_attention_fwd, f"vllm ({VLLM_TRITON_MODULE})"
        except Exception as exc:  # vLLM absent, or present but unusable here
            errors.append(f"vLLM: {type(exc).__name__}: {exc}")
    folder = os.path.abspath(path)
    kernel_file = os.path.join(folder, PEER_TRITON_MODULE + ".py")
    if not os.path.isfile(kernel_file):
        errors.append(f"no {kernel_file}")
        raise KernelUnavailable(
            "TRITON_MLA is not available: " + "; ".join(errors) + ". Install vLLM, or run "
            "shared/tools/fetch-triton-mla (it writes .peers/triton_mla; pass another folder with "
            "--triton-path), or pass --no-triton to time our kernel alone.")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # also makes its two-module vllm shim importable
    try:
        module = importlib.import_module(PEER_TRITON_MODULE)
    except Exception as exc:
        raise KernelUnavailable(f"TRITON_MLA: importing {kernel_file} failed: {type(exc).__name__}: {exc}") from exc
    if os.path.dirname(os.path.abspath(module.__file__)) != folder:
        raise KernelUnavailable(f"TRITON_MLA: '{PEER_TRITON_MODULE}' was already imported from "
                                f"{module.__file__}, not from {folder}")
    return module.decode_attention_fwd, f"folder {folder}"


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def num_kv_splits(max_seq_len: int, sm_count: int) -> int:
    """vLLM's _compute_num_kv_splits: a power of 2 near max_seq_len / 512, capped at 2 per SM."""
    ideal = next_power_of_2(max(1, max_seq_len // _MIN_WORK_PER_SPLIT))
    return min(ideal, sm_count * _SPLIT_OCCUPANCY_MULTIPLIER)


def triton_workspace_bytes(shape: Shape, sm_count: int, max_seq_len: int | None = None) -> int:
    """attn_logits [T, H, splits, 513] fp32, plus o and lse in bf16 and the row-expanded tables;
    splits planned from max_seq_len (default: the full context)."""
    splits = num_kv_splits(max_seq_len or shape.context, sm_count)
    logits = shape.rows * shape.heads * splits * (V_DIM + 1) * 4
    o_lse = shape.rows * shape.heads * (V_DIM + 1) * 2
    tables = shape.rows * (shape.pages_per_request + 1) * 4 if shape.query_len > 1 else 0
    return logits + o_lse + tables


def prepare_ours(mla_decode: Callable, inputs: DecodeInputs, max_seq_len: int | None = None,
                 environment: dict[str, str] | None = None) -> PreparedCall:
    """Our op on the inputs, told max_seq_len (default: the batch's longest request); with
    `environment`, each call runs with those variables set (--sm12x-residency)."""
    shape = inputs.shape
    q = inputs.q
    hint = int(max_seq_len or inputs.max_seq_len)
    out = torch.empty(shape.rows, shape.heads, V_DIM, dtype=q.dtype, device=q.device)
    lse = torch.empty(shape.rows, shape.heads, dtype=torch.float32, device=q.device)

    def run():
        mla_decode(q, inputs.kv_cache, inputs.block_table, inputs.seq_lens,
                   softmax_scale=inputs.softmax_scale, kv_scale=inputs.kv_scale,
                   query_len=shape.query_len, causal=True, out=out, lse=lse, return_lse=True,
                   max_seq_len=hint)

    plan = {"max_seq_len": hint}
    if environment:
        plan["environment"] = dict(environment)
    return PreparedCall("ours", residency.with_environment(run, environment), out, lse, plan)


def per_row_tables(block_table: torch.Tensor, seq_lens: torch.Tensor, query_len: int):
    """forward_mqa's causal expansion: one decode row per query token, row t of a
    request attending seq_len - query_len + 1 + t tokens."""
    if query_len == 1:
        return block_table, seq_lens
    rows_table = block_table.repeat_interleave(query_len, dim=0)
    offsets = torch.arange(1 - query_len, 1, device=seq_lens.device, dtype=seq_lens.dtype)
    rows_lens = (seq_lens.unsqueeze(1) + offsets).flatten().clamp(min=0)
    return rows_table, rows_lens


def prepare_triton(decode_attention_fwd: Callable, inputs: DecodeInputs, sm_count: int,
                   max_seq_len: int | None = None) -> PreparedCall:
    """TRITON_MLA on the inputs, its num_kv_splits from max_seq_len (attn_metadata.max_seq_len;
    default: the batch's longest request)."""
    shape = inputs.shape
    q = inputs.q
    rows = q.shape[0]
    hint = int(max_seq_len or inputs.max_seq_len)
    o = torch.zeros(rows, shape.heads, V_DIM, dtype=q.dtype, device=q.device)
    lse = torch.zeros(rows, shape.heads, dtype=q.dtype, device=q.device)
    splits = num_kv_splits(hint, sm_count)
    attn_logits = torch.empty(rows, shape.heads, splits, V_DIM + 1, dtype=torch.float32, device=q.device)
    kv = inputs.kv_cache.unsqueeze(2)
    kv_c = kv[..., :V_DIM]
    page_size = kv.size(1)
    block_table, seq_lens = per_row_tables(inputs.block_table, inputs.seq_lens, shape.query_len)
    scale = inputs.kv_scale
    if scale is None:
        scale = torch.ones(1, dtype=torch.float32, device=q.device)
    assert q.shape[-1] == KV_DIM

    def run():
        decode_attention_fwd(q, kv, kv_c, o, lse, block_table, seq_lens, attn_logits, splits,
                             inputs.softmax_scale, page_size, k_scale=scale, v_scale=scale, is_mla=True)

    return PreparedCall("TRITON_MLA", run, o, lse, {"max_seq_len": hint, "num_kv_splits": splits})


def run_reference(mla_decode_reference: Callable, inputs: DecodeInputs):
    """(out, lse) in fp32 from the reference, on the same tensors."""
    return mla_decode_reference(inputs.q, inputs.kv_cache, inputs.block_table, inputs.seq_lens,
                                softmax_scale=inputs.softmax_scale, kv_scale=inputs.kv_scale,
                                query_len=inputs.shape.query_len, causal=True)
