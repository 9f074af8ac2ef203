"""Which compiled kernel variants the GPU suite launched, at which page sizes.

The list of variants is csrc/variants.def, read through mla_plugin.kernel_variants: never a
copy here. Two records feed the check:
  - dispatch.launched_variants(): every variant a launch plan chose in this process
    (dispatch's own record);
  - the launches the tests made through cases.decode(): the LaunchPlan dispatch returned
    (from a wrapper around dispatch.launch_plan, installed on first use) and the page size.
The session's last GPU test (tests/gpu/test_variant_coverage.py, moved last by
tests/gpu/conftest.py) fails listing every variant not launched at every page size of
PAGE_SIZES. Plain Python (CPU-tested in tests/test_gpu_coverage.py).
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE_SIZES = (16, 64)  # every variant runs at least once at each of these block sizes


@dataclass(frozen=True)
class Record:
    shape: object  # dispatch.LaunchShape
    plan: object  # dispatch.LaunchPlan


@dataclass(frozen=True)
class Launch:
    plan: object  # dispatch.LaunchPlan
    block_size: int

    @property
    def variant(self):
        return self.plan.variant

    @property
    def num_splits(self) -> int:
        return self.plan.num_splits


class PlanRecorder:
    """Stands in for dispatch.launch_plan: calls the real one (its lru_cache included) and
    keeps (shape, plan) of every call."""

    def __init__(self, original):
        self.original = original
        self.records: list[Record] = []

    def __call__(self, shape):
        plan = self.original(shape)
        self.records.append(Record(shape, plan))
        return plan

    def cache_clear(self):  # dispatch.launch_plan is an lru_cache; tune.py clears it
        self.original.cache_clear()

    def cache_info(self):
        return self.original.cache_info()


_launches: list[Launch] = []


def recorder(dispatch_module=None) -> PlanRecorder:
    """The PlanRecorder installed as dispatch.launch_plan (installed on the first call)."""
    if dispatch_module is None:
        from mla_plugin import dispatch as dispatch_module
    current = dispatch_module.launch_plan
    if isinstance(current, PlanRecorder):
        return current
    wrapper = PlanRecorder(current)
    dispatch_module.launch_plan = wrapper
    return wrapper


def note_launch(record: Record, block_size: int) -> Launch:
    launch = Launch(record.plan, int(block_size))
    _launches.append(launch)
    return launch


def launches() -> tuple[Launch, ...]:
    return tuple(_launches)


def reset() -> None:
    _launches.clear()


def missing(variants, launched_variants, launches_made, page_sizes=PAGE_SIZES) -> list[str]:
    """One line per gap: a compiled variant dispatch never launched, or one the tests never
    launched at one of page_sizes."""
    launched_variants = set(launched_variants)
    at = {}
    for launch in launches_made:
        at.setdefault(launch.variant, set()).add(launch.block_size)
    lines = []
    for v in variants:
        if v not in launched_variants:
            lines.append(f"{v}: never launched (dispatch.launched_variants)")
            continue
        gaps = [bs for bs in page_sizes if bs not in at.get(v, set())]
        if gaps:
            lines.append(f"{v}: not launched by the tests at block_size {', '.join(map(str, gaps))}")
    return lines
