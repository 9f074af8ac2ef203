"""--kernel-times: how one of our decode steps splits between its CUDA kernels (pure Python).

bench/device.py profile_kernel_events replays our op's CUDA graph a few times under
torch.profiler and returns the events; breakdown() turns them into per-step device times:
- combine: kernels whose name contains "combine" (mla_combine_kernel, the split-KV merge);
- decode: the other kernels whose name contains "decode" (mla_decode_kernel);
- step: the two together, our op's whole device time per step; combine_pct = combine / step.
Other kernels in the window (the L2 flush before each replay) are counted apart and are not
part of the step. Times are the kernels' own durations (end - start), summed over the
profiled replays and divided by their number; gaps between kernels are not included, so the
step can be a little shorter than the replay's CUDA-event time.

Nothing here raises for odd profiler output: a breakdown without kernel events, or without
a decode kernel, comes back with a note saying so and no times.
"""

from __future__ import annotations

DEFAULT_REPLAYS = 5


def is_device_kernel(event) -> bool:
    """A CUDA-side event (torch.autograd.DeviceType.CUDA; its str ends with 'CUDA')."""
    device_type = getattr(event, "device_type", None)
    return device_type is not None and str(device_type).rsplit(".", 1)[-1].upper() == "CUDA"


def duration_us(event) -> float | None:
    """An event's own duration in microseconds: time_range (FunctionEvent), else the
    device-time fields of older and newer torch versions."""
    time_range = getattr(event, "time_range", None)
    if time_range is not None and getattr(time_range, "end", None) is not None:
        return float(time_range.end) - float(time_range.start)
    for name in ("device_time", "cuda_time", "self_device_time_total", "device_time_total"):
        value = getattr(event, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def classify(name: str) -> str:
    lowered = name.lower()
    if "combine" in lowered:
        return "combine"
    if "decode" in lowered:
        return "decode"
    return "other"


def breakdown(events, replays: int) -> dict:
    """Per-step device times of our op from profiler events of `replays` graph replays:
    {decode_us, combine_us, step_us, combine_pct, kernels_per_step, decode_kernels,
    combine_kernels, other_kernels, other_us, replays, note}. Times are None (and note says
    why) when the events hold no CUDA kernel, or no decode kernel."""
    result = {"decode_us": None, "combine_us": None, "step_us": None, "combine_pct": None,
              "kernels_per_step": None, "decode_kernels": [], "combine_kernels": [], "other_kernels": [],
              "other_us": None, "replays": replays, "note": ""}
    if replays < 1:
        result["note"] = f"kernel times: {replays} replays profiled, nothing to divide by"
        return result
    totals = {"decode": 0.0, "combine": 0.0, "other": 0.0}
    counts = {"decode": 0, "combine": 0, "other": 0}
    names = {"decode": {}, "combine": {}, "other": {}}
    for event in events or ():
        if not is_device_kernel(event):
            continue
        duration = duration_us(event)
        if duration is None:
            continue
        name = str(getattr(event, "name", "") or getattr(event, "key", "") or "?")
        kind = classify(name)
        totals[kind] += duration
        counts[kind] += 1
        names[kind][name] = names[kind].get(name, 0) + 1
    result["decode_kernels"] = sorted(names["decode"])
    result["combine_kernels"] = sorted(names["combine"])
    result["other_kernels"] = sorted(names["other"])
    if not any(counts.values()):
        result["note"] = "kernel times: the profiler recorded no CUDA kernel events"
        return result
    if counts["decode"] == 0:
        shown = ", ".join(result["other_kernels"][:3]) or "none"
        result["note"] = (f"kernel times: no decode kernel among the {sum(counts.values())} kernel events "
                          f"(others: {shown})")
        return result
    decode = totals["decode"] / replays
    combine = totals["combine"] / replays
    step = decode + combine
    result.update(decode_us=decode, combine_us=combine, step_us=step,
                  combine_pct=100.0 * combine / step if step > 0 else None,
                  kernels_per_step=(counts["decode"] + counts["combine"]) / replays,
                  other_us=totals["other"] / replays)
    if counts["decode"] % replays:
        result["note"] = (f"kernel times: {counts['decode']} decode kernel events over {replays} replays "
                          f"(not a whole number per replay: the profiler may have dropped some)")
    return result


def row_fields(result: dict, prefix: str = "ours") -> dict:
    """The result row's columns from a breakdown."""
    return {
        f"{prefix}_decode_kernel_us": result.get("decode_us"),
        f"{prefix}_combine_kernel_us": result.get("combine_us"),
        f"{prefix}_kernels_us": result.get("step_us"),
        f"{prefix}_combine_pct": result.get("combine_pct"),
        f"{prefix}_kernels_per_step": result.get("kernels_per_step"),
    }
