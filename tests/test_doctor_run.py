"""`python -m mla_plugin doctor --run` without a GPU: the real case builder and measures on
CPU tensors (with the op's CPU path and kernel-like fakes), and the whole self-test with its
GPU side faked by a runner: report shape, exit statuses and messages for all pass, a wrong
case, a kernel build failure, no GPU and TRITON_MLA missing. (On a GPU:
tests/gpu/test_doctor_run.py.)"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from mla_plugin.doctor import cases as doctor_cases
from mla_plugin.doctor import cli as doctor
from mla_plugin.doctor import selftest
from mla_plugin.doctor import verdict as doctor_verdict
from mla_plugin.doctor.facts import ENTRY_POINT_VALUE, Facts, GpuFacts
from mla_plugin.doctor.selftest import CASES, TIMED_SHAPES, SelfTestCase
from mla_plugin.reference import mla_decode_reference

PREBUILT = "/opt/mla_plugin/kernels/abc-torch2.14.0-sm120a-121a"


# ------------------------------------------------------------------ the fixed case set
def test_cases_cover_what_the_self_test_promises():
    assert {c.dtype for c in CASES} == {"bf16", "fp8"}
    for dtype in ("bf16", "fp8"):
        mine = [c for c in CASES if c.dtype == dtype]
        assert {c.heads for c in mine} == {16, 128}
        assert {c.page_size for c in mine} == {16, 64}
        assert {c.query_len for c in mine} == {1, 2}
    assert all(0 in c.seq_lens for c in CASES)  # a padding row in every case
    ragged = [c for c in CASES if len({s for s in c.seq_lens if s}) > 1]
    assert len(ragged) >= 6
    assert any(s % c.page_size for c in CASES for s in c.seq_lens)  # partial last pages
    assert len({c.name for c in CASES}) == len(CASES)


def test_fp8_cases_avoid_short_rows_the_fp8_tolerance_is_not_for():
    for c in CASES:
        if c.dtype == "fp8":
            assert all(s in (0, 1) or s >= 513 for s in c.seq_lens), c.name


def test_timed_shapes_are_the_three_named_ones_in_both_dtypes():
    assert [s.label for s in TIMED_SHAPES] == [
        "B1 H16 4k bf16", "B8 H16 4k bf16", "B32 H128 4k bf16",
        "B1 H16 4k fp8", "B8 H16 4k fp8", "B32 H128 4k fp8"]


def test_tolerances_are_the_stated_constants():
    assert (selftest.BF16_MAX_ABS, selftest.BF16_MEAN_REL) == (2e-2, 1e-2)
    assert (selftest.FP8_MAX_ABS, selftest.FP8_MEAN_REL) == (2e-2, 1e-2)
    assert (selftest.FP8_E4M3_MAX_ABS, selftest.FP8_E4M3_MEAN_REL) == (3e-2, 2e-2)
    assert selftest.TOLERANCES["bf16"].max_abs == selftest.BF16_MAX_ABS
    assert selftest.TOLERANCES["fp8"].mean_rel == selftest.FP8_MEAN_REL


# ------------------------------------------------------------------ the inputs, on CPU
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_inputs_are_built_the_hard_way(case):
    inp = doctor_cases.build_inputs(case, "cpu")
    blocks = inp.kv_cache.shape[0]
    assert inp.kv_cache.dtype == (torch.float8_e4m3fn if case.dtype == "fp8" else torch.bfloat16)
    assert inp.q.shape == (case.batch * case.query_len, case.heads, 576)
    assert inp.seq_lens.tolist() == list(case.seq_lens)
    used_pages = []
    for b, s in enumerate(case.seq_lens):
        n = math.ceil(s / case.page_size)
        row = inp.block_table[b].tolist()
        used_pages += row[:n]
        poisoned = inp.kv_cache[row[n]].to(torch.float32)
        assert torch.isnan(poisoned).all()  # the page right after: valid index, NaN inside
        assert row[-1] == -1
        assert any(not 0 <= x < blocks for x in row[n + 1:])  # garbage tail
        if n and s % case.page_size:  # unwritten slots of the last page are NaN
            last = inp.kv_cache[row[n - 1]].to(torch.float32)
            assert torch.isnan(last[s % case.page_size:]).all()
            assert not torch.isnan(last[:s % case.page_size]).any()
    assert len(set(used_pages)) == len(used_pages)
    if len(used_pages) > 2:
        assert used_pages != sorted(used_pages)  # random page order


def test_inputs_are_the_same_bits_on_every_call():
    a = doctor_cases.build_inputs(CASES[0], "cpu")
    b = doctor_cases.build_inputs(CASES[0], "cpu")
    assert torch.equal(a.q, b.q) and torch.equal(a.block_table, b.block_table)


def test_kernel_q_emulation_is_a_power_of_two_scale():
    q = torch.randn(4, 16, 576).to(torch.bfloat16)
    emulated = doctor_cases.emulate_kernel_q(q)
    ratio = (emulated.abs().amax(-1) / q.float().abs().amax(-1))
    assert torch.allclose(ratio, torch.ones_like(ratio), rtol=0.07)
    assert not torch.equal(emulated, q.float())  # it does round


# ------------------------------------------------------------- measures, with CPU "kernels"
def kernel_like(q, kv_cache, block_table, seq_lens, *, round_q=False, **kw):
    """What a right kernel computes under the default math: the fp32 reference, written in
    bf16 (round_q: q rounded to e4m3 first, as the e4m3 opt-in does)."""
    if round_q:
        q = doctor_cases.emulate_kernel_q(q)
    kw.pop("return_lse"), kw.pop("max_seq_len")
    out, lse = mla_decode_reference(q, kv_cache, block_table, seq_lens, **kw)
    return out.to(torch.bfloat16), lse


def check(case, op):
    errors = doctor_cases.check_case(case, "cpu", op, mla_decode_reference)
    return errors, selftest.judge(case, errors)


@pytest.mark.parametrize("case", [c for c in CASES if c.dtype == "bf16"], ids=lambda c: c.name)
def test_the_ops_cpu_path_passes_the_bf16_cases(case):
    from mla_plugin.ops import mla_decode

    errors, problems = check(case, mla_decode)
    assert problems == [], errors
    assert errors["nan_count"] == 0 and errors["padding_rows_ok"]
    assert 0 < errors["max_abs"] < 1e-2  # the bf16 output's rounding, measured


@pytest.mark.parametrize("case", [c for c in CASES if c.dtype == "fp8"], ids=lambda c: c.name)
def test_a_right_kernel_passes_the_fp8_cases(case):
    errors, problems = check(case, kernel_like)
    assert problems == [], errors


def test_reading_past_the_length_is_caught_as_nan():
    def one_token_too_many(q, kv_cache, block_table, seq_lens, **kw):
        return kernel_like(q, kv_cache, block_table, torch.where(seq_lens > 0, seq_lens + 1,
                                                                 seq_lens), **kw)

    case = CASES[0]  # lengths 1, 700, 4097, 33 end inside a page: the next slot is NaN
    errors, problems = check(case, one_token_too_many)
    assert errors["nan_count"] > 0
    assert any("NaN in the output" in p for p in problems)


def test_a_wrong_scale_is_caught():
    def five_percent_off(*args, **kw):
        out, lse = kernel_like(*args, **kw)
        return out * 1.05, lse

    errors, problems = check(CASES[1], five_percent_off)
    assert any(p.startswith("mean relative error") for p in problems), errors
    assert any(p.startswith("max abs error") for p in problems), errors


def test_a_padding_row_that_is_not_zero_is_caught():
    def garbage_in_padding(q, kv_cache, block_table, seq_lens, **kw):
        out, lse = kernel_like(q, kv_cache, block_table, seq_lens, **kw)
        lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        return out, lse

    errors, problems = check(CASES[2], garbage_in_padding)
    assert errors["padding_rows_ok"] is False
    assert "a row that sees no token (seq_len 0) is not zeros with lse -inf" in problems


def test_an_fp8_kernel_that_rounds_q_to_e4m3_misses_the_default_tolerance():
    # The default fp8 tolerance is tight enough to see q rounded to e4m3 (~4% relative, the
    # e4m3 opt-in's cost): it measures the default path's own rounding, not a loose envelope.
    errors, problems = check(CASES[6], lambda *a, **k: kernel_like(*a, round_q=True, **k))
    assert any(p.startswith("mean relative error") for p in problems), errors


def test_under_the_e4m3_math_the_reference_rounds_q_and_the_tolerance_is_the_e4m3_one(monkeypatch):
    monkeypatch.setenv("MLA_PLUGIN_FP8_MATH", "e4m3")
    assert selftest.tolerance_for("fp8") == selftest.E4M3_TOLERANCE
    assert selftest.tolerance_for("bf16") == selftest.TOLERANCES["bf16"]
    errors, problems = check(CASES[6], lambda *a, **k: kernel_like(*a, round_q=True, **k))
    assert problems == [], errors


# ----------------------------------------------------------------- the self-test, faked GPU
def rtx_pro_6000(index=0):
    return GpuFacts(index, "NVIDIA RTX PRO 6000 Blackwell Workstation Edition", (12, 0), 101376,
                    PREBUILT)


def a100(index=0):
    return GpuFacts(index, "NVIDIA A100-SXM4-80GB", (8, 0), 166912)


def machine(*gpus, **changes) -> Facts:
    facts = Facts(python="3.12.3", torch="2.14.0+cu130", torch_cuda="13.0", vllm="0.33.0",
                  cuda_home="/usr/local/cuda", nvcc="/usr/local/cuda/bin/nvcc", nvcc_version="13.0",
                  gpus=list(gpus), entry_point=ENTRY_POINT_VALUE,
                  backend="mla_plugin.backend.XqaMlaBackend")
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


GOOD = {"max_abs": 4e-3, "mean_rel": 1.5e-3, "lse_max_abs": 2e-6, "nan_count": 0, "inf_count": 0,
        "padding_rows_ok": True, "rows_seeing_tokens": 64, "rows_seeing_none": 16}


class FakeRunner(selftest.Runner):
    """The GPU side, made up: every knob is a way the real one can go wrong."""

    def __init__(self, *, errors=None, kernel_error=None, case_error=None, triton_error=None,
                 timing_error=None, triton_shape_error=None):
        self.errors = errors or {}  # case name -> measure() dict
        self.kernel_error, self.case_error = kernel_error, case_error
        self.triton_error, self.timing_error = triton_error, timing_error
        self.triton_shape_error = triton_shape_error
        self.calls = []

    def versions(self):
        return {"python": "3.12.3", "torch": "2.14.0+cu130", "cuda": "13.0", "driver": "580.95.05",
                "triton": "3.6.0", "mla_plugin": "0.1.0", "kernel_sources": "abc123"}

    def describe(self, index):
        return {"name": "NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "capability": "12.0",
                "sm_count": 188, "memory_bytes": 97_887_000_000, "l2_bytes": 134_217_728,
                "smem_optin": 101376}

    def load_kernel(self, index):
        self.calls.append(("load", index))
        if self.kernel_error:
            raise RuntimeError(self.kernel_error)
        return {"source": f"prebuilt, {PREBUILT}", "arch": "12.0a", "seconds": 0.2, "detail": "0.2 s"}

    def check_case(self, index, case):
        self.calls.append(("case", index, case.name))
        if self.case_error and case.name == self.case_error[0]:
            raise RuntimeError(self.case_error[1])
        return dict(self.errors.get(case.name, GOOD))

    def load_triton(self):
        if self.triton_error:
            raise RuntimeError(self.triton_error)
        return object(), "vllm (vllm.v1.attention.ops.triton_decode_attention)"

    def time_shape(self, index, shape, triton):
        self.calls.append(("time", index, shape.label))
        if self.timing_error and shape.label == self.timing_error[0]:
            raise RuntimeError(self.timing_error[1])
        row = {"ours_us": 20.0 * shape.batch ** 0.5}
        if triton is not None:
            if self.triton_shape_error == shape.label:
                row["triton_error"] = "OutOfResources: shared memory"
            else:
                row["triton_us"] = 2 * row["ours_us"]
        return row


def run_doctor(monkeypatch, capsys, facts, runner, json_target=None):
    monkeypatch.setattr(doctor.doctor_facts, "gather", lambda: facts)
    monkeypatch.setattr(doctor, "make_runner", lambda: runner)
    status = doctor.main(argparse.Namespace(json=json_target, run=True))
    out = capsys.readouterr()
    return status, out.out, out.err


def json_report(monkeypatch, capsys, facts, runner):
    status, out, _ = run_doctor(monkeypatch, capsys, facts, runner, json_target="-")
    return status, json.loads(out)


def test_all_pass(monkeypatch, capsys):
    runner = FakeRunner()
    status, text, progress = run_doctor(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    assert status == 0
    lines = text.splitlines()
    assert lines[-1] == "doctor --run: PASS (10 cases on 1 GPU(s), 6 shapes timed)"
    assert "doctor: OK" in lines  # the serving verdict is still there, before the self-test
    assert lines[lines.index("doctor: OK") + 1].startswith("self-test: 10 decode cases per served GPU")
    assert any(line.startswith("GPU 0  NVIDIA RTX PRO 6000 Blackwell Workstation Edition  compute "
                               "capability 12.0  188 SMs: kernel prebuilt, ") for line in lines)
    assert sum(line.startswith("  ok    ") for line in lines) == len(CASES)
    assert "    B1 H16 4k bf16     ours 20.0 us, TRITON_MLA 40.0 us (2.00x)" in lines
    assert not any(line.startswith("FAIL") for line in lines)
    assert "[doctor --run] GPU 0 (NVIDIA RTX PRO 6000 Blackwell Workstation Edition): case 10/10" in progress
    assert [c for c in runner.calls if c[0] == "load"] == [("load", 0)]


def test_all_pass_json_report_shape(monkeypatch, capsys):
    status, data = json_report(monkeypatch, capsys, machine(rtx_pro_6000()), FakeRunner())
    assert status == 0
    st = data["self_test"]
    assert (st["status"], st["ok"], st["exit_status"]) == ("pass", True, 0)
    assert st["failures"] == [] and st["summary"].startswith("doctor --run: PASS")
    assert st["tolerances"]["bf16"] == {"max_abs": 0.02, "mean_rel": 0.01}
    assert st["tolerances"]["fp8"] == {"max_abs": 0.02, "mean_rel": 0.01}
    assert st["tolerances"]["lse_max_abs"] == 0.001
    assert {"torch", "triton", "vllm", "mla_plugin", "cuda", "driver"} <= set(st["versions"])
    assert st["versions"]["vllm"] == "0.33.0"  # from doctor's facts
    (gpu,) = st["gpus"]
    assert gpu["name"] == "NVIDIA RTX PRO 6000 Blackwell Workstation Edition"
    assert (gpu["capability"], gpu["sm_count"], gpu["status"]) == ("12.0", 188, "passed")
    assert gpu["kernel"]["source"].startswith("prebuilt")
    assert len(gpu["cases"]) == len(CASES)
    for case, result in zip(CASES, gpu["cases"]):
        assert result["name"] == case.name and result["status"] == "pass"
        assert {"max_abs", "mean_rel", "nan_count", "lse_max_abs", "tolerance"} <= set(result)
        assert result["tolerance"] == st["tolerances"][case.dtype]
    timings = gpu["timings"]
    assert timings["triton"] == "TRITON_MLA from vllm (vllm.v1.attention.ops.triton_decode_attention)"
    assert [r["label"] for r in timings["shapes"]] == [s.label for s in TIMED_SHAPES]
    assert all(r["ours_us"] > 0 and r["triton_us"] > 0 and r["speedup"] == 2.0
               for r in timings["shapes"])
    assert "CUDA-graph replay" in timings["method"]
    # doctor's own report is all there too
    assert data["facts"]["gpus"][0]["name"].startswith("NVIDIA RTX PRO 6000") and data["ok"] is True


def test_one_wrong_case(monkeypatch, capsys):
    wrong = CASES[8]  # an fp8 one
    runner = FakeRunner(errors={wrong.name: {**GOOD, "max_abs": 0.051, "mean_rel": 0.031}})
    status, text, _ = run_doctor(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    assert status == 2
    lines = text.splitlines()
    assert (f"FAIL wrong-case: GPU 0 (NVIDIA RTX PRO 6000 Blackwell Workstation Edition): "
            f"{wrong.name}: max abs error 0.051 > 0.02; mean relative error 0.031 > 0.01") in lines
    assert lines[-1] == "doctor --run: FAIL (1 failure(s): wrong-case)"
    assert sum(line.startswith("  WRONG ") for line in lines) == 1
    status, data = json_report(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    result = data["self_test"]["gpus"][0]["cases"][8]
    assert result["status"] == "wrong" and result["max_abs"] == 0.051
    assert result["problems"] == ["max abs error 0.051 > 0.02", "mean relative error 0.031 > 0.01"]
    assert data["self_test"]["gpus"][0]["status"] == "failed"


def test_nan_in_a_case_is_wrong_and_the_json_stays_valid(monkeypatch, capsys):
    runner = FakeRunner(errors={CASES[0].name: {**GOOD, "nan_count": 5120, "max_abs": float("nan"),
                                                "mean_rel": float("inf")}})
    status, data = json_report(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    assert status == 2
    result = data["self_test"]["gpus"][0]["cases"][0]
    assert result["max_abs"] is None and result["mean_rel"] is None  # not NaN: valid JSON
    assert "5120 NaN in the output" in result["problems"]


def test_kernel_build_failure(monkeypatch, capsys):
    runner = FakeRunner(kernel_error="Error building extension 'mla_plugin_kernels'\n"
                                     "nvcc fatal: Unsupported gpu architecture 'compute_120a'")
    status, text, progress = run_doctor(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    assert status == 2
    lines = text.splitlines()
    assert ("FAIL kernel-build: GPU 0 (NVIDIA RTX PRO 6000 Blackwell Workstation Edition): "
            "RuntimeError: Error building extension 'mla_plugin_kernels'") in lines
    assert lines[-1] == "doctor --run: FAIL (1 failure(s): kernel-build)"
    assert "FAILED to build or load the kernel" in progress
    assert not [c for c in runner.calls if c[0] != "load"]  # no case ran without a kernel
    status, data = json_report(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    gpu = data["self_test"]["gpus"][0]
    assert gpu["status"] == "failed" and gpu["cases"] == []
    assert "nvcc fatal: Unsupported gpu architecture 'compute_120a'" in gpu["reason"]  # all of it


def test_no_gpu(monkeypatch, capsys):
    runner = FakeRunner()
    facts = machine(cuda_visible_devices="", gpu_error="torch.cuda.is_available() is False")
    status, text, _ = run_doctor(monkeypatch, capsys, facts, runner)
    assert status == 1
    lines = text.splitlines()
    assert lines[-1] == "doctor --run: NOT RUN (no-gpu)"
    assert lines[-2].startswith("self-test not run: no CUDA GPU visible (CUDA_VISIBLE_DEVICES='')")
    assert runner.calls == []
    status, data = json_report(monkeypatch, capsys, facts, runner)
    assert data["self_test"]["status"] == "not-run" and data["self_test"]["gpus"] == []


def test_only_unserved_gpus_are_listed_as_skipped(monkeypatch, capsys):
    status, data = json_report(monkeypatch, capsys, machine(a100()), FakeRunner())
    assert status == 1
    (gpu,) = data["self_test"]["gpus"]
    assert gpu["status"] == "skipped" and "compute capability 8.0 is not SM12x" in gpu["reason"]
    assert data["self_test"]["summary"] == "doctor --run: NOT RUN (no-served-gpu)"


def test_a_mixed_machine_tests_the_served_gpu_and_skips_the_other(monkeypatch, capsys):
    runner = FakeRunner()
    status, text, _ = run_doctor(monkeypatch, capsys, machine(a100(0), rtx_pro_6000(1)), runner)
    assert status == 0
    assert any(line.startswith("GPU 0  NVIDIA A100-SXM4-80GB  compute capability 8.0: skipped: "
                               "compute capability 8.0 is not SM12x") for line in text.splitlines())
    assert {c[1] for c in runner.calls} == {1}


def test_triton_mla_missing(monkeypatch, capsys):
    why = ("TRITON_MLA is not available: vLLM: ModuleNotFoundError: No module named 'vllm'; "
           "no /work/.peers/triton_mla/triton_decode_attention.py. Install vLLM, or run "
           "shared/tools/fetch-triton-mla")
    runner = FakeRunner(triton_error=why)
    status, text, _ = run_doctor(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    assert status == 0  # our kernel was right; the baseline is only missing
    lines = text.splitlines()
    expected = ("TRITON_MLA not available: vLLM: ModuleNotFoundError: No module named 'vllm'; no "
                "/work/.peers/triton_mla/triton_decode_attention.py. Install vLLM, or run "
                "shared/tools/fetch-triton-mla")
    assert f"note: {expected}" in lines
    assert any(line.startswith("  timings (") and line.endswith(f"; {expected}:") for line in lines)
    assert "    B1 H16 4k bf16     ours 20.0 us" in lines
    status, data = json_report(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    timings = data["self_test"]["gpus"][0]["timings"]
    assert timings["triton"] == expected
    assert all(r["triton_us"] is None and r["ours_us"] for r in timings["shapes"])


def test_triton_failing_on_one_shape_is_a_note_not_a_failure(monkeypatch, capsys):
    runner = FakeRunner(triton_shape_error="B32 H128 4k fp8")
    status, data = json_report(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    assert status == 0
    assert any("TRITON_MLA failed on B32 H128 4k fp8: OutOfResources" in n
               for n in data["self_test"]["notes"])


def test_a_case_that_raises_fails_and_stops_the_timing(monkeypatch, capsys):
    runner = FakeRunner(case_error=(CASES[3].name, "CUDA error: an illegal memory access was "
                                                   "encountered"))
    status, text, _ = run_doctor(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    assert status == 2
    lines = text.splitlines()
    assert any(line.startswith("FAIL case-error: GPU 0 (") and "illegal memory access" in line
               for line in lines)
    assert "  timings: a case raised (the GPU's CUDA context may be unusable): not timed" in lines
    assert len([c for c in runner.calls if c[0] == "case"]) == len(CASES)  # the rest still ran


def test_our_kernel_failing_while_timed_is_a_failure(monkeypatch, capsys):
    runner = FakeRunner(timing_error=("B8 H16 4k fp8", "operation not permitted when stream is "
                                                       "capturing"))
    status, data = json_report(monkeypatch, capsys, machine(rtx_pro_6000()), runner)
    assert status == 2
    assert any(f.startswith("timing-error: GPU 0 (") and "B8 H16 4k fp8" in f
               for f in data["self_test"]["failures"])


def test_two_gpus_of_one_model_are_both_checked_and_timed_once(monkeypatch, capsys):
    runner = FakeRunner()
    status, data = json_report(monkeypatch, capsys, machine(rtx_pro_6000(0), rtx_pro_6000(1)), runner)
    assert status == 0
    gpus = data["self_test"]["gpus"]
    assert [len(g["cases"]) for g in gpus] == [len(CASES), len(CASES)]
    assert gpus[1]["timings"]["skipped"] == "same GPU model as GPU 0, timed there"
    assert data["self_test"]["summary"] == "doctor --run: PASS (20 cases on 2 GPU(s), 6 shapes timed)"


def test_cpu_only_torch_is_not_run(monkeypatch, capsys):
    status, data = json_report(monkeypatch, capsys, machine(rtx_pro_6000(), torch_cuda=None),
                               FakeRunner())
    assert status == 1 and data["self_test"]["summary"] == "doctor --run: NOT RUN (torch-cpu-only)"


def test_serving_blockers_do_not_hide_a_passing_self_test(monkeypatch, capsys):
    # A GPU box with torch but without vLLM (like our H200 test machine): the kernel is checked,
    # the serving verdict still says what is missing.
    facts = machine(rtx_pro_6000(), vllm=None, vllm_error="ModuleNotFoundError: No module named "
                    "'vllm'", backend=None, entry_point=None)
    status, text, _ = run_doctor(monkeypatch, capsys, facts, FakeRunner())
    assert status == 0
    lines = text.splitlines()
    assert "doctor: BLOCKED (vllm-missing, entry-point-missing)" in lines
    assert lines[-1].startswith("doctor --run: PASS")


def test_json_file_gets_the_report_and_stdout_the_text(monkeypatch, capsys, tmp_path):
    target = tmp_path / "report.json"
    status, text, progress = run_doctor(monkeypatch, capsys, machine(rtx_pro_6000()), FakeRunner(),
                                        json_target=str(target))
    assert status == 0
    assert text.splitlines()[-1].startswith("doctor --run: PASS")
    data = json.loads(target.read_text())
    assert data["self_test"]["status"] == "pass"
    assert f"doctor: JSON report written to {target}" in progress


def test_json_file_that_cannot_be_written_is_a_failure(monkeypatch, capsys, tmp_path):
    status, _, progress = run_doctor(monkeypatch, capsys, machine(rtx_pro_6000()), FakeRunner(),
                                     json_target=str(tmp_path / "missing" / "report.json"))
    assert status == 2
    assert "doctor: cannot write the JSON report to" in progress


def test_plain_doctor_is_unchanged_by_the_run_option(monkeypatch, capsys):
    monkeypatch.setattr(doctor.doctor_facts, "gather", lambda: machine(rtx_pro_6000()))
    monkeypatch.setattr(doctor, "make_runner", lambda: pytest.fail("no runner without --run"))
    assert doctor.main(argparse.Namespace(json="-", run=False)) == 0
    assert "self_test" not in json.loads(capsys.readouterr().out)
    assert doctor.main(argparse.Namespace(json=None, run=False)) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "doctor: OK"


def test_command_line_options():
    from mla_plugin.__main__ import make_parser

    parser = make_parser()
    assert parser.parse_args(["doctor"]).json is None
    assert parser.parse_args(["doctor", "--json"]).json == "-"
    assert parser.parse_args(["doctor", "--json", "out.json", "--run"]).json == "out.json"
    args = parser.parse_args(["doctor", "--json", "--run"])
    assert args.json == "-" and args.run is True


def test_real_runner_is_what_main_makes():
    runner = doctor.make_runner()
    from mla_plugin.doctor.gpu import CudaRunner

    assert isinstance(runner, CudaRunner) and isinstance(runner, selftest.Runner)
    versions = runner.versions()
    assert versions["torch"] == torch.__version__
    assert versions["mla_plugin_path"].endswith("mla_plugin")
    assert isinstance(SelfTestCase("bf16", 16, 16, 1, (1,)).name, str)


def test_a_runner_that_cannot_start_is_a_failure(monkeypatch, capsys):
    def broken():
        raise OSError("libcudart.so.13: cannot open shared object file")

    monkeypatch.setattr(doctor.doctor_facts, "gather", lambda: machine(rtx_pro_6000()))
    monkeypatch.setattr(doctor, "make_runner", broken)
    assert doctor.main(argparse.Namespace(json=None, run=True)) == 2
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert "FAIL runner: OSError: libcudart.so.13: cannot open shared object file" in lines
    assert lines[-1] == "doctor --run: FAIL (runner)"
    assert "Traceback" in out.err


def test_a_bug_in_the_self_test_is_a_failure_not_a_crash(monkeypatch, capsys):
    def buggy_judge(case, errors):
        raise KeyError("max_abs")

    monkeypatch.setattr(selftest, "judge", buggy_judge)
    status, text, err = run_doctor(monkeypatch, capsys, machine(rtx_pro_6000()), FakeRunner())
    assert status == 2
    assert text.splitlines()[-1] == "doctor --run: FAIL (internal)"
    assert "Traceback" in err
