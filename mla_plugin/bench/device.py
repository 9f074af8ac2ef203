"""What needs the GPU itself: the timer, the device's measured limits, its description."""

from __future__ import annotations

import platform

import torch

from mla_plugin.bench.roofline import copy_bandwidth_gbs, median

COPY_BUFFER_BYTES = 1 << 30  # per buffer: 20x an H100's 50 MB L2, so the copy runs from DRAM
MIN_FLUSH_BYTES = 256 << 20


def cuda_missing_message() -> str | None:
    """None when a CUDA GPU is usable, else why not (names CUDA, for the refusal)."""
    if torch.cuda.is_available():
        return None
    built = torch.version.cuda or "none (a CPU-only build)"
    return (f"needs a CUDA GPU, but CUDA is not available here "
            f"(torch {torch.__version__}, built with CUDA {built}; torch.cuda.is_available() is False). "
            f"Run it on a machine with an NVIDIA GPU.")


def current_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def synchronize() -> None:
    torch.cuda.synchronize()


def release_cached_memory() -> None:
    """Give the shape's freed tensors back to the driver before the next shape allocates."""
    torch.cuda.empty_cache()


def describe_device(device: torch.device) -> dict:
    props = torch.cuda.get_device_properties(device)
    smem_per_sm = getattr(props, "shared_memory_per_multiprocessor", None)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "name": props.name,
        "index": device.index,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "l2_bytes": getattr(props, "L2_cache_size", None),
        "memory_bytes": props.total_memory,
        "smem_per_sm": smem_per_sm,
        "driver": _driver_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
    }


def _driver_version(path: str = "/proc/driver/nvidia/version") -> str | None:
    """The NVIDIA driver's version (for the run's record), or None where it can't be read."""
    try:
        with open(path) as f:
            first = f.readline()
    except OSError:
        return None
    for word in first.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return word
    return None


class L2Flusher:
    """Zeroes a buffer several times the L2 before each timed call, so every repetition
    reads its KV from DRAM as a real decode step (other layers ran in between) does.
    Its few tens of microseconds of GPU work also cover the host's launch latency."""

    def __init__(self, device: torch.device):
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
        self.nbytes = max(4 * l2, MIN_FLUSH_BYTES)
        self.buffer = torch.empty(self.nbytes, dtype=torch.uint8, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


def time_us(fn, *, reps: int, warmup: int, flush) -> list[float]:
    """Per-repetition times in microseconds, CUDA events around each call, flush() before each."""
    for _ in range(warmup):
        flush()
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        flush()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) * 1e3 for start, end in zip(starts, ends)]


def time_us_graph(fn, *, reps: int, warmup: int, flush) -> list[float]:
    """Like time_us, but fn is captured once in a CUDA graph and each repetition replays it:
    host-side launch cost (Python argument checks, Triton's launcher) stays out of the numbers,
    as in vLLM, which replays decode steps from CUDA graphs."""
    for _ in range(warmup):
        flush()
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    return time_us(graph.replay, reps=reps, warmup=1, flush=flush)


def profile_kernel_events(fn, *, replays: int, flush) -> list:
    """The profiler events of `replays` CUDA-graph replays of fn, flush() before each (as
    when timed). The graph is captured inside the profiling session, as a profiler that
    first attaches after a capture may miss that graph's kernels. For
    kernel_times.breakdown; call it after the timing, never during."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm: the graph must not capture a first call's compilation or allocations
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize()
        for _ in range(replays):
            flush()
            graph.replay()
        torch.cuda.synchronize()
    return list(prof.events())


def measure_copy_bandwidth(device: torch.device, nbytes: int = COPY_BUFFER_BYTES, reps: int = 30) -> dict:
    """A large device-to-device copy: GB/s counting bytes read + written, median of reps."""
    t = median(_copy_times_us(device, nbytes, reps))
    torch.cuda.empty_cache()  # the 2 GiB of buffers died with _copy_times_us
    return {"copy_bw_gbs": copy_bandwidth_gbs(nbytes, t * 1e-6), "copy_bytes": nbytes, "copy_us": t,
            "method": f"torch copy_ of a {nbytes >> 20} MiB buffer, median of {reps}, 2 x bytes counted"}


def _copy_times_us(device: torch.device, nbytes: int, reps: int) -> list[float]:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return time_us(lambda: dst.copy_(src), reps=reps, warmup=3, flush=lambda: None)


def measure_mma_peak(device: torch.device) -> dict:
    """mma.sync BF16 m16n8k16 peak from our extension's loop kernel, or why there is none."""
    try:
        from mla_plugin.dispatch import mma_sync_peak_tflops
    except ImportError as exc:
        return {"mma_peak_tflops": None,
                "mma_peak_source": f"missing: mla_plugin.dispatch.mma_sync_peak_tflops cannot be imported ({exc})"}
    try:
        value = float(mma_sync_peak_tflops(device=device))
    except Exception as exc:  # the extension may fail to build or launch: report, don't crash
        return {"mma_peak_tflops": None,
                "mma_peak_source": f"failed: mla_plugin.dispatch.mma_sync_peak_tflops raised "
                                   f"{type(exc).__name__}: {exc}"}
    return {"mma_peak_tflops": value,
            "mma_peak_source": "measured: mla_plugin.dispatch.mma_sync_peak_tflops (mma.sync bf16 m16n8k16)"}


def free_bytes(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0]
