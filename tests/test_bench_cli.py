"""The `bench` command: option refusals, the refusal without CUDA, and a whole run on the
CPU with the device probes and kernels replaced by fakes (no GPU needed)."""

import argparse
import csv
import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_fakes sits beside the tests
import bench_fakes  # noqa: E402
from mla_plugin.bench import cli as bench
from mla_plugin.bench import device as bench_device
from mla_plugin.bench import kernels as bench_kernels
from mla_plugin.bench import residency as bench_residency

REPO = Path(__file__).resolve().parents[1]


def parse(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_dispatcher_finds_the_bench_module():
    from mla_plugin.__main__ import SUBCOMMANDS

    module = importlib.import_module(SUBCOMMANDS["bench"][0])
    assert module is bench
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    module.add_arguments(sub.add_parser("bench"))
    args = parser.parse_args(["bench", "--quick", "--no-triton", "--page-size", "32"])
    assert args.quick and args.no_triton and args.page_size == 32
    assert args.out_dir == os.path.join("out", "bench") and args.reps >= 20


def test_refuses_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(parse("--quick")) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "CUDA is not available" in err


def test_script_refuses_without_cuda_in_a_fresh_process():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # hides any GPU, so this holds on a GPU machine too
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_bench.py"), "--quick"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv,message", [
    (["--reps", "5"], "--reps: 5 is fewer than 20"),
    (["--warmup", "0"], "--warmup: at least 1"),
    (["--no-ours", "--no-triton"], "leaves nothing to time"),
    (["--batch", "1,b"], "--batch: 'b' is not an integer"),
    (["--page-size", "48"], "--page-size: 48"),
    (["--context", "4k,32k", "--max-model-len", "16384"], "--max-model-len: 16384 is shorter than the longest"),
    (["--no-ours", "--sm12x-residency"], "--sm12x-residency changes our kernel only"),
    (["--no-ours", "--kernel-times"], "--kernel-times profiles our kernel only"),
])
def test_bad_options_are_refused_before_anything_runs(argv, message, capsys):
    assert bench.main(parse(*argv)) == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def cpu_device(monkeypatch):
    """Stand the CPU in for the GPU: probes give fixed numbers, the timer fixed times."""
    monkeypatch.setattr(bench_device, "cuda_missing_message", lambda: None)
    monkeypatch.setattr(bench_device, "current_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(bench_device, "describe_device", lambda d: {
        "name": "Fake GPU 80GB", "index": 0, "capability": "9.0", "sm_count": 132, "l2_bytes": 50 << 20,
        "memory_bytes": 80 << 30, "smem_per_sm": 228 * 1024, "driver": "580.0", "torch": torch.__version__, "torch_cuda": None, "triton": None, "python": "3"})
    monkeypatch.setattr(bench_device, "measure_copy_bandwidth", lambda d: {
        "copy_bw_gbs": 3000.0, "copy_bytes": 1 << 30, "copy_us": 716.0, "method": "fake"})
    monkeypatch.setattr(bench_device, "measure_mma_peak", lambda d: {
        "mma_peak_tflops": None, "mma_peak_source": "missing: mla_plugin.dispatch.mma_sync_peak_tflops (fake)"})
    monkeypatch.setattr(bench_device, "L2Flusher", lambda d: type("Flush", (), {"nbytes": 256 << 20})())
    timings = {}

    def time_us(fn, *, reps, warmup, flush):
        fn()
        name = "ours" if fn.__qualname__.startswith("prepare_ours") else "triton"
        return [timings[name]] * reps

    monkeypatch.setattr(bench_device, "time_us_graph", time_us)
    monkeypatch.setattr(bench_device, "synchronize", lambda: None)
    monkeypatch.setattr(bench_device, "release_cached_memory", lambda: None)
    monkeypatch.setattr(bench_device, "free_bytes", lambda d: 64 << 30)
    return timings


def test_whole_run_on_cpu_writes_table_csv_json(cpu_device, monkeypatch, tmp_path, capsys):
    cpu_device.update(ours=10.0, triton=25.0)
    monkeypatch.setattr(bench_kernels, "load_ours", lambda: bench_fakes.make_ours())
    monkeypatch.setattr(bench_kernels, "load_triton_mla", lambda path: (bench_fakes.make_triton(), "fake"))
    monkeypatch.setattr(bench_kernels, "load_reference", lambda: bench_fakes.reference)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # no plot: must say so and still succeed
    args = parse("--batch", "1,2", "--heads", "16", "--context", "128", "--page-size", "16",
                 "--out-dir", str(tmp_path))
    assert bench.main(args) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err

    assert "Fake GPU 80GB" in out and "copy bandwidth: 3000 GB/s" in out
    assert "n/a: missing: mla_plugin.dispatch.mma_sync_peak_tflops" in out
    assert out.count("2.50x") >= 8 + 6  # each of the 4 shapes in 2 modes, then the geo-means
    lines = out.splitlines()
    assert "eager uniform    2.50x    2.50x    2.50x" in lines[lines.index(
        "geo-mean speed-up over TRITON_MLA (shapes where both were right and timed):") + 2]
    assert "graph uniform    2.50x    2.50x    2.50x" in out
    assert "mode graph: both contenders planned for max_seq_len = max_model_len = 131072" in out
    assert "lengths: uniform" in out and "residency" not in out
    assert "no plot: matplotlib is not installed" in out
    assert "[1/4] B1 H16 128 bf16 (page 16, eager+graph)" in err and "[4/4]" in err and "elapsed" in err

    (csv_path,) = tmp_path.glob("mla_bench_fake-gpu-80gb_*.csv")
    (json_path,) = tmp_path.glob("mla_bench_fake-gpu-80gb_*.json")
    assert not list(tmp_path.glob("*.png"))
    rows = list(csv.DictReader(open(csv_path)))
    assert [(r["batch"], r["dtype"], r["mode"], r["status"]) for r in rows] == [
        (b, d, m, "ok") for d in ("bf16", "fp8") for b in ("1", "2") for m in ("eager", "graph")]
    assert all(float(r["ours_vs_reference_max_abs"]) < 2e-2 and float(r["triton_vs_reference_max_abs"]) < 2e-2
               for r in rows)
    assert {r["ours_max_seq_len"] for r in rows if r["mode"] == "graph"} == {"131072"}
    assert {r["ours_max_seq_len"] for r in rows if r["mode"] == "eager"} == {"128"}
    report = json.loads(json_path.read_text())
    assert report["summary"]["geomean_speedup"]["graph uniform"]["all"] == pytest.approx(2.5)
    from mla_plugin import dispatch
    assert report["conditions"] == {"modes": ["eager", "graph"], "max_model_len": 131072, "lengths": "uniform",
                                    "seed": 0, "sm12x_residency": None, "fp8_math": dispatch.resolve_fp8_math()}
    assert f"our FP8-cache math: {dispatch.resolve_fp8_math()}" in out
    assert set(report["method"]["modes"]) == {"eager", "graph"}
    assert report["summary"]["accuracy"]["eager uniform"]["bf16"]["shapes"] == 2
    assert report["device"]["name"] == "Fake GPU 80GB" and report["copy_bandwidth"]["copy_bw_gbs"] == 3000.0
    assert "L2 flushed" in report["method"]["timing"] and "median of 30" in report["method"]["timing"]
    assert report["results"][0]["ours_pct_mma_peak"] is None


def test_a_wrong_kernel_makes_the_run_fail(cpu_device, monkeypatch, tmp_path, capsys):
    cpu_device.update(ours=1.0, triton=25.0)

    def drop_rope(q, kv_cache, block_table, seq_lens, **kw):  # a plausible bug: K without its RoPE part
        q = q.clone()
        q[..., 512:] = 0
        return bench_fakes.make_ours()(q, kv_cache, block_table, seq_lens, **kw)

    monkeypatch.setattr(bench_kernels, "load_ours", lambda: drop_rope)
    monkeypatch.setattr(bench_kernels, "load_triton_mla", lambda path: (bench_fakes.make_triton(), "fake"))
    monkeypatch.setattr(bench_kernels, "load_reference", lambda: bench_fakes.reference)
    args = parse("--batch", "1", "--heads", "16", "--context", "256", "--dtype", "bf16", "--page-size", "16",
                 "--out-dir", str(tmp_path))
    assert bench.main(args) == 1
    out = capsys.readouterr().out
    assert "wrong" in out and "25.0x" not in out
    assert "eager uniform        -        -" in out and "graph uniform        -        -" in out  # no speed-up


def test_missing_triton_is_a_clear_refusal(cpu_device, monkeypatch, tmp_path, capsys):
    def unavailable(path):
        raise bench_kernels.KernelUnavailable("TRITON_MLA is not available: ... run shared/tools/fetch-triton-mla")

    monkeypatch.setattr(bench_kernels, "load_ours", lambda: bench_fakes.make_ours())
    monkeypatch.setattr(bench_kernels, "load_triton_mla", unavailable)
    assert bench.main(parse("--quick", "--out-dir", str(tmp_path))) == 2
    assert "fetch-triton-mla" in capsys.readouterr().err


def _fake_dispatch(monkeypatch, **attributes):
    module = types.ModuleType("mla_plugin.dispatch")
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, "mla_plugin.dispatch", module)


def test_missing_mma_helper_is_reported_not_fatal(monkeypatch):
    _fake_dispatch(monkeypatch)  # a dispatch module without the helper
    result = bench_device.measure_mma_peak(None)
    assert result["mma_peak_tflops"] is None
    assert result["mma_peak_source"].startswith("missing: mla_plugin.dispatch.mma_sync_peak_tflops")


def test_failing_mma_helper_is_reported_not_fatal(monkeypatch):
    def broken(device=None):
        raise RuntimeError("ninja: build stopped")

    _fake_dispatch(monkeypatch, mma_sync_peak_tflops=broken)
    result = bench_device.measure_mma_peak(None)
    assert result["mma_peak_tflops"] is None
    assert "failed" in result["mma_peak_source"] and "ninja: build stopped" in result["mma_peak_source"]


def test_mma_helper_value_is_used(monkeypatch):
    seen = []
    _fake_dispatch(monkeypatch, mma_sync_peak_tflops=lambda device=None: seen.append(device) or 656.5)
    result = bench_device.measure_mma_peak("cuda:1")
    assert result["mma_peak_tflops"] == 656.5 and seen == ["cuda:1"]
    assert result["mma_peak_source"].startswith("measured")


def test_new_options_and_their_defaults():
    args = parse()
    assert (args.mode, args.lengths, args.max_model_len) == ("both", "uniform", 131072)
    assert not args.sm12x_residency and not args.kernel_times
    args = parse("--mode", "graph", "--lengths", "ragged", "--max-model-len", "65536", "--sm12x-residency",
                 "--kernel-times")
    assert (args.mode, args.lengths, args.max_model_len, args.sm12x_residency, args.kernel_times) == (
        "graph", "ragged", 65536, True, True)
    for bad in (["--mode", "cudagraph"], ["--lengths", "zipf"]):
        with pytest.raises(SystemExit):
            parse(*bad)


def test_a_short_max_model_len_is_fine_in_eager_mode_alone(cpu_device, monkeypatch, tmp_path):
    cpu_device.update(ours=10.0, triton=25.0)
    _fake_kernels(monkeypatch)
    args = parse("--batch", "1", "--heads", "16", "--context", "256", "--dtype", "bf16", "--page-size", "16",
                 "--mode", "eager", "--max-model-len", "100", "--out-dir", str(tmp_path))
    assert bench.main(args) == 0


def _fake_kernels(monkeypatch, ours=None, triton=None):
    monkeypatch.setattr(bench_kernels, "load_ours", lambda: ours or bench_fakes.make_ours())
    monkeypatch.setattr(bench_kernels, "load_triton_mla", lambda path: (triton or bench_fakes.make_triton(), "fake"))
    monkeypatch.setattr(bench_kernels, "load_reference", lambda: bench_fakes.reference)


def _report(tmp_path):
    (json_path,) = tmp_path.glob("mla_bench_*.json")
    return json.loads(json_path.read_text())


def test_graph_ragged_run_names_its_condition_everywhere(cpu_device, monkeypatch, tmp_path, capsys):
    cpu_device.update(ours=10.0, triton=40.0)
    _fake_kernels(monkeypatch)
    args = parse("--batch", "8", "--heads", "16", "--context", "512", "--dtype", "fp8", "--page-size", "16",
                 "--mode", "graph", "--lengths", "ragged", "--seed", "3", "--out-dir", str(tmp_path))
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("B8 H16 512 fp8 ragged")]
    assert line.split()[5] == "graph"
    assert "lengths: ragged: each request's seq_len drawn uniformly in [query_len, context]" in out
    assert "graph ragged    4.00x    4.00x" in out
    report = _report(tmp_path)
    (row,) = report["results"]
    assert row["mode"] == "graph" and row["lengths"] == "ragged" and row["seq_len_max"] < 512
    assert report["conditions"]["lengths"] == "ragged" and report["conditions"]["seed"] == 3
    assert "ragged" in report["method"]["inputs"]


def test_sm12x_residency_run_states_the_emulation_and_sets_the_variable_for_ours_only(
        cpu_device, monkeypatch, tmp_path, capsys):
    cpu_device.update(ours=10.0, triton=25.0)
    variable = bench_residency.env_name()
    monkeypatch.delenv(variable, raising=False)
    seen = {"ours": set(), "triton": set()}

    def ours(*args, **kwargs):
        seen["ours"].add(os.environ.get(variable))
        return bench_fakes.make_ours()(*args, **kwargs)

    def triton(*args, **kwargs):
        seen["triton"].add(os.environ.get(variable))
        return bench_fakes.make_triton()(*args, **kwargs)

    _fake_kernels(monkeypatch, ours=ours, triton=triton)
    args = parse("--batch", "1", "--heads", "16", "--context", "128", "--dtype", "bf16", "--page-size", "16",
                 "--sm12x-residency", "--out-dir", str(tmp_path))
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert seen == {"ours": {"1"}, "triton": {None}} and variable not in os.environ
    assert "This emulates residency only: not SM12x clocks, SM count or GDDR7 memory bandwidth." in out
    assert "this GPU fits 2 CTAs of 101376 B per SM natively, SM12x 1, and such a CTA then requests" in out
    assert "WARNING" not in out  # this tree's dispatch reads the variable
    assert "eager uniform sm12x-residency" in out and "graph uniform sm12x-residency" in out
    report = _report(tmp_path)
    residency = report["conditions"]["sm12x_residency"]
    assert residency["emulated"] is True and residency["env"] == variable and residency["emulated_ctas_per_sm"] == 1
    assert all(r["sm12x_residency"] is True for r in report["results"])


class _KernelEvent:
    device_type = "DeviceType.CUDA"

    def __init__(self, name, us):
        self.name, self.time_range = name, types.SimpleNamespace(start=0.0, end=us)


def test_kernel_times_run_shows_the_combine_share(cpu_device, monkeypatch, tmp_path, capsys):
    cpu_device.update(ours=10.0, triton=25.0)
    _fake_kernels(monkeypatch)
    profiled = []

    def profile(fn, *, replays, flush):
        profiled.append(fn.__qualname__)
        return ([_KernelEvent("void mla::mla_decode_kernel<...>", 6.0)] * replays
                + [_KernelEvent("void mla::mla_combine_kernel<...>", 2.0)] * replays
                + [_KernelEvent("FillFunctor (the L2 flush)", 40.0)] * replays)

    monkeypatch.setattr(bench_device, "profile_kernel_events", profile)
    args = parse("--batch", "1", "--heads", "16", "--context", "128", "--dtype", "bf16", "--page-size", "16",
                 "--kernel-times", "--out-dir", str(tmp_path))
    assert bench.main(args) == 0
    assert profiled == ["prepare_ours.<locals>.run"] * 2  # ours, once per mode
    out = capsys.readouterr().out
    assert "  25  ok" in out  # comb% column
    report = _report(tmp_path)
    for row in report["results"]:
        assert row["ours_decode_kernel_us"] == 6.0 and row["ours_combine_kernel_us"] == 2.0
        assert row["ours_kernels_us"] == 8.0 and row["ours_combine_pct"] == 25.0
    assert "torch.profiler" in report["method"]["kernel_times"]


def test_kernel_times_without_kernel_events_is_a_note(cpu_device, monkeypatch, tmp_path, capsys):
    cpu_device.update(ours=10.0, triton=25.0)
    _fake_kernels(monkeypatch)
    monkeypatch.setattr(bench_device, "profile_kernel_events", lambda fn, *, replays, flush: [])
    args = parse("--batch", "1", "--heads", "16", "--context", "128", "--dtype", "bf16", "--page-size", "16",
                 "--kernel-times", "--mode", "eager", "--out-dir", str(tmp_path))
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "ok  (kernel times: the profiler recorded no CUDA kernel events)" in out


def test_a_residency_setting_left_in_the_shell_is_overridden_and_said(cpu_device, monkeypatch, tmp_path, capsys):
    cpu_device.update(ours=10.0, triton=25.0)
    variable = bench_residency.env_name()
    monkeypatch.setenv(variable, "1")
    seen = set()

    def ours(*args, **kwargs):
        seen.add(os.environ.get(variable))
        return bench_fakes.make_ours()(*args, **kwargs)

    _fake_kernels(monkeypatch, ours=ours)
    args = parse("--batch", "1", "--heads", "16", "--context", "128", "--dtype", "bf16", "--page-size", "16",
                 "--mode", "eager", "--out-dir", str(tmp_path))
    assert bench.main(args) == 0
    assert seen == {"0"} and os.environ[variable] == "1"
    assert f"{variable}=1 in the environment is overridden to 0 for our calls" in capsys.readouterr().out
    assert _report(tmp_path)["conditions"]["sm12x_residency"] is None
