"""The shapes the bench times: option parsing and the grid they span (pure Python).

A shape is one decode step: `batch` requests, each at `context` tokens (including the
`query_len` new ones), `heads` query heads, a paged KV cache of `dtype` with `page_size`
tokens per page. With `lengths="ragged"` the requests' lengths are drawn in
[query_len, context] instead (bench/inputs.py request_lengths): `context` is then the
longest a request may be, and the cache still holds `context` tokens of pages per request.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from mla_plugin import geometry

DEFAULT_BATCHES = (1, 8, 32, 64, 128)
DEFAULT_HEADS = (16, 32, 64, 128)
DEFAULT_CONTEXTS = (1024, 4096, 16384, 32768)
DEFAULT_DTYPES = ("bf16", "fp8")
DEFAULT_PAGE_SIZE = 64
LENGTHS = ("uniform", "ragged")  # every request at the full context, or drawn in [query_len, context]
DEFAULT_LENGTHS = "uniform"

# --quick: a smoke run that still covers both regimes (memory-bound 16 heads,
# compute-heavy 128 heads), a split-KV-starved batch of 1, and both dtypes.
QUICK_BATCHES = (1, 32)
QUICK_HEADS = (16, 128)
QUICK_CONTEXTS = (1024, 4096)

KV_DTYPES = ("bf16", "fp8")
PAGE_SIZES = geometry.BLOCK_SIZES  # the op contract's block sizes
MAX_QUERY_LEN = geometry.MAX_QUERY_LEN  # the op contract: query_len 1..8
MAX_HEADS = geometry.MAX_HEADS


@dataclass(frozen=True)
class Shape:
    batch: int
    heads: int
    context: int
    dtype: str  # "bf16" or "fp8": the KV cache dtype (q is bf16 in both)
    page_size: int = DEFAULT_PAGE_SIZE
    query_len: int = 1
    lengths: str = DEFAULT_LENGTHS  # "uniform" or "ragged"

    @property
    def rows(self) -> int:
        """Query tokens T = batch * query_len (the op's first dimension)."""
        return self.batch * self.query_len

    @property
    def pages_per_request(self) -> int:
        return -(-self.context // self.page_size)

    @property
    def label(self) -> str:
        qlen = f" q{self.query_len}" if self.query_len != 1 else ""
        ragged = " ragged" if self.lengths == "ragged" else ""
        return f"B{self.batch} H{self.heads} {format_tokens(self.context)} {self.dtype}{qlen}{ragged}"

    def as_dict(self) -> dict:
        return asdict(self)


def format_tokens(n: int) -> str:
    """1024 -> '1k', 32768 -> '32k', 1000 -> '1000'."""
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; refuses empty items, non-integers and values < 1."""
    values = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            raise ValueError(f"{what}: {item!r} is not an integer (expected e.g. '1,8,32')") from None
        if value < 1:
            raise ValueError(f"{what}: {value} must be at least 1")
        values.append(value)
    return _unique(values)


def parse_token_count(item: str) -> int:
    """'4k' or '4K' -> 4096 (k = 1024 tokens), '1000' -> 1000."""
    text = item.strip().lower()
    scale = 1
    if text.endswith("k"):
        text, scale = text[:-1], 1024
    try:
        value = int(text) * scale
    except ValueError:
        raise ValueError(f"--context: {item!r} is not a token count (expected e.g. '1k,4k' or '1000')") from None
    if value < 1:
        raise ValueError(f"--context: {item!r} must be at least 1 token")
    return value


def parse_context_list(text: str) -> list[int]:
    return _unique(parse_token_count(item) for item in text.split(","))


def parse_dtype_list(text: str) -> list[str]:
    aliases = {"bf16": "bf16", "bfloat16": "bf16", "fp8": "fp8", "fp8_e4m3": "fp8", "e4m3": "fp8"}
    values = []
    for item in text.split(","):
        key = item.strip().lower()
        if key not in aliases:
            raise ValueError(f"--dtype: {item.strip()!r} is not a KV cache dtype (expected bf16 and/or fp8)")
        values.append(aliases[key])
    return _unique(values)


def check_page_size(page_size: int) -> int:
    if page_size not in PAGE_SIZES:
        raise ValueError(f"--page-size: {page_size} is not one of {', '.join(map(str, PAGE_SIZES))}")
    return page_size


def check_query_len(query_len: int) -> int:
    if not 1 <= query_len <= MAX_QUERY_LEN:
        raise ValueError(f"--query-len: {query_len} is outside 1..{MAX_QUERY_LEN}")
    return query_len


def check_lengths(lengths: str) -> str:
    if lengths not in LENGTHS:
        raise ValueError(f"--lengths: {lengths!r} is not one of {', '.join(LENGTHS)}")
    return lengths


def build_grid(batches, heads, contexts, dtypes, *, page_size=DEFAULT_PAGE_SIZE, query_len=1,
               lengths=DEFAULT_LENGTHS) -> list[Shape]:
    """Every combination, dtype outermost so that each dtype's shapes run together."""
    check_page_size(page_size)
    check_query_len(query_len)
    check_lengths(lengths)
    for h in heads:
        if h > MAX_HEADS:
            raise ValueError(f"--heads: {h} is more than {MAX_HEADS}")
    for c in contexts:
        if c < query_len:
            raise ValueError(f"--context: {c} tokens is shorter than --query-len {query_len}")
    return [
        Shape(batch=b, heads=h, context=c, dtype=d, page_size=page_size, query_len=query_len, lengths=lengths)
        for d, c, h, b in itertools.product(dtypes, contexts, heads, batches)
    ]


def grid_from_options(*, batch=None, heads=None, context=None, dtype=None, page_size=DEFAULT_PAGE_SIZE,
                      query_len=1, quick=False, lengths=DEFAULT_LENGTHS) -> list[Shape]:
    """The grid the command line asks for: option strings (None = default), --quick
    replacing the defaults of the options that were not given."""
    batches = parse_int_list(batch, "--batch") if batch else (QUICK_BATCHES if quick else DEFAULT_BATCHES)
    head_counts = parse_int_list(heads, "--heads") if heads else (QUICK_HEADS if quick else DEFAULT_HEADS)
    contexts = parse_context_list(context) if context else (QUICK_CONTEXTS if quick else DEFAULT_CONTEXTS)
    dtypes = parse_dtype_list(dtype) if dtype else DEFAULT_DTYPES
    return build_grid(batches, head_counts, contexts, dtypes, page_size=page_size, query_len=query_len,
                      lengths=lengths)


def _unique(values) -> list:
    """Drop repeats, keep the order given."""
    return list(dict.fromkeys(values))
