"""The compiled decode kernel variants, read from csrc/variants.def (the one list: the C++
dispatch table, the translation units and these names all come from it).

A variant is (kv, q, out, mma, rows): cache element, query element, output element,
tensor-core input element and query rows per CTA, each element one of "bf16", "fp16",
"fp8" (e4m3). Plain Python: no torch import.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from mla_plugin import _paths

# csrc/config.cuh's Elem names -> ours
ELEM_NAMES = {"BF16": "bf16", "FP16": "fp16", "E4M3": "fp8"}
_LINE = re.compile(r"^MLA_VARIANT\((\w+), (\w+), (\w+), (\w+), (\w+), (\d+)\)\s*$")

# The FP8-cache math the op offers: 16-bit tensor cores on the exactly converted cache (the
# default: the cache's own rounding is the only error), or e4m3 tensor cores (q and P rounded
# to e4m3; twice the 16-bit rate on SM12x, emulated on Hopper).
FP8_MATH_MMA = {"fp16": "fp16", "e4m3": "fp8"}
DEFAULT_FP8_MATH = "fp16"


@dataclass(frozen=True, order=True)
class Variant:
    kv: str
    q: str
    out: str
    mma: str
    rows: int

    def __str__(self) -> str:
        return f"kv={self.kv} q={self.q} out={self.out} mma={self.mma} rows={self.rows}"


@dataclass(frozen=True)
class VariantLine:
    unit: str
    variant: Variant


def parse(text: str) -> tuple[VariantLine, ...]:
    lines = []
    for raw in text.splitlines():
        if not raw.startswith("MLA_VARIANT("):
            continue
        m = _LINE.match(raw)
        if not m:
            raise ValueError(f"csrc/variants.def: cannot read {raw!r}")
        unit, kv, q, out, mma, rows = m.groups()
        try:
            names = [ELEM_NAMES[e] for e in (kv, q, out, mma)]
        except KeyError as exc:
            raise ValueError(f"csrc/variants.def: unknown element {exc} in {raw!r}") from None
        lines.append(VariantLine(unit, Variant(*names, int(rows))))
    if not lines:
        raise ValueError("csrc/variants.def lists no MLA_VARIANT")
    return tuple(lines)


@functools.lru_cache(maxsize=None)
def variant_lines() -> tuple[VariantLine, ...]:
    return parse((_paths.csrc_dir() / "variants.def").read_text())


def variants() -> tuple[Variant, ...]:
    """Every variant the build compiles."""
    return tuple(v.variant for v in variant_lines())


def units() -> tuple[str, ...]:
    """The translation units' names (launch_<unit>.cu), in order of first appearance."""
    return tuple(dict.fromkeys(v.unit for v in variant_lines()))


def rows_choices(kv: str) -> tuple[int, ...]:
    """Rows per CTA compiled for a cache dtype."""
    return tuple(sorted({v.rows for v in variants() if v.kv == kv}))


def mma_for(kv: str, fp8_math: str) -> str:
    """The tensor-core input element of a cache dtype (fp8_math matters for an FP8 cache only)."""
    if kv != "fp8":
        return kv
    return FP8_MATH_MMA[fp8_math]


def find(kv: str, q: str, out: str, mma: str, rows: int) -> Variant | None:
    wanted = Variant(kv, q, out, mma, rows)
    return wanted if wanted in variants() else None
