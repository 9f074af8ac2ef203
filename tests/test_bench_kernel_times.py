"""--kernel-times: turning profiler events into our op's per-kernel step times, with fake
events (torch's own FunctionEvent objects and plain stand-ins), no GPU."""

import types

import pytest
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from mla_plugin.bench import kernel_times

DECODE = "void mla::mla_decode_kernel<mla::KernelConfig<(mla::Elem)0, 16> >(CUtensorMap, mla::DecodeParams)"
COMBINE = "void mla::mla_combine_kernel<(mla::Elem)0>(mla::CombineParams)"
FLUSH = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<unsigned char>, ...>"


def kernel(name, start, end, device_type=DeviceType.CUDA):
    return FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=end, device_type=device_type)


def replays_of(n, decode_us, combine_us, flush_us=40.0):
    events, t = [], 0.0
    for _ in range(n):
        events.append(kernel(FLUSH, t, t + flush_us))
        t += flush_us
        events.append(kernel("cudaGraphLaunch", t, t + 5.0, DeviceType.CPU))  # host side: not a kernel
        events.append(kernel(DECODE, t, t + decode_us))
        t += decode_us + 1.0
        if combine_us:
            events.append(kernel(COMBINE, t, t + combine_us))
            t += combine_us
    return events


def test_decode_and_combine_per_step_and_the_combine_share():
    result = kernel_times.breakdown(replays_of(5, decode_us=30.0, combine_us=10.0), replays=5)
    assert result["decode_us"] == pytest.approx(30.0)
    assert result["combine_us"] == pytest.approx(10.0)
    assert result["step_us"] == pytest.approx(40.0)
    assert result["combine_pct"] == pytest.approx(25.0)
    assert result["kernels_per_step"] == 2
    assert result["decode_kernels"] == [DECODE] and result["combine_kernels"] == [COMBINE]
    assert result["other_kernels"] == [FLUSH] and result["other_us"] == pytest.approx(40.0)  # the L2 flush
    assert result["note"] == ""


def test_one_split_plans_have_no_combine():
    result = kernel_times.breakdown(replays_of(3, decode_us=12.0, combine_us=0), replays=3)
    assert result["combine_us"] == 0.0 and result["combine_pct"] == 0.0
    assert result["step_us"] == pytest.approx(12.0) and result["kernels_per_step"] == 1


def test_no_kernel_events_is_a_note_not_a_crash():
    for events in ([], None, [kernel("cudaGraphLaunch", 0, 5, DeviceType.CPU)]):
        result = kernel_times.breakdown(events, replays=5)
        assert result["step_us"] is None and result["combine_pct"] is None
        assert result["note"] == "kernel times: the profiler recorded no CUDA kernel events"


def test_kernels_without_a_decode_kernel_are_reported():
    result = kernel_times.breakdown([kernel(FLUSH, 0, 40)] * 5, replays=5)
    assert result["step_us"] is None
    assert "no decode kernel among the 5 kernel events" in result["note"] and "FillFunctor" in result["note"]


def test_dropped_events_are_noted():
    events = replays_of(5, decode_us=30.0, combine_us=10.0)
    events.remove(next(e for e in events if e.name == DECODE))
    result = kernel_times.breakdown(events, replays=5)
    assert result["decode_us"] == pytest.approx(4 * 30.0 / 5)
    assert "4 decode kernel events over 5 replays" in result["note"]


def test_zero_replays_divide_by_nothing():
    assert "nothing to divide by" in kernel_times.breakdown(replays_of(1, 1.0, 1.0), replays=0)["note"]


def test_stand_in_events_with_other_attribute_names():
    # an event type without time_range (older/newer torch): device_time in microseconds, str device type
    decode = types.SimpleNamespace(name="mla_decode_kernel", device_type="DeviceType.CUDA", device_time=20.0)
    combine = types.SimpleNamespace(key="mla_combine_kernel", name=None, device_type="CUDA", cuda_time=5.0)
    no_time = types.SimpleNamespace(name="mla_decode_kernel", device_type="DeviceType.CUDA")  # skipped
    cpu = types.SimpleNamespace(name="mla_decode_kernel", device_type="DeviceType.CPU", device_time=99.0)
    result = kernel_times.breakdown([decode, combine, no_time, cpu], replays=1)
    assert result["decode_us"] == 20.0 and result["combine_us"] == 5.0 and result["combine_pct"] == 20.0


def test_row_fields():
    fields = kernel_times.row_fields(kernel_times.breakdown(replays_of(2, 30.0, 10.0), replays=2))
    assert fields == {"ours_decode_kernel_us": pytest.approx(30.0), "ours_combine_kernel_us": pytest.approx(10.0),
                      "ours_kernels_us": pytest.approx(40.0), "ours_combine_pct": pytest.approx(25.0),
                      "ours_kernels_per_step": 2}
    empty = kernel_times.row_fields(kernel_times.breakdown([], replays=2))
    assert set(empty.values()) == {None}
