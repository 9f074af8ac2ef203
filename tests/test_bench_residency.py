"""--sm12x-residency: the environment the bench gives our calls, and the residency arithmetic."""

import os
import sys
import types

import pytest

from mla_plugin import geometry
from mla_plugin.bench import residency

VAR = "MLA_PLUGIN_TEST_RESIDENCY_VAR"


def test_environment_sets_and_removes_a_variable_that_was_absent(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    with residency.environment({VAR: "1"}):
        assert os.environ[VAR] == "1"
    assert VAR not in os.environ


def test_environment_restores_a_previous_value_even_after_an_error(monkeypatch):
    monkeypatch.setenv(VAR, "0")
    with pytest.raises(RuntimeError):
        with residency.environment({VAR: "1"}):
            assert os.environ[VAR] == "1"
            raise RuntimeError("launch failed")
    assert os.environ[VAR] == "0"


def test_with_environment_wraps_each_call_and_keeps_the_name(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    seen = []

    def run():
        seen.append(os.environ.get(VAR))

    wrapped = residency.with_environment(run, {VAR: "1"})
    wrapped()
    wrapped()
    assert seen == ["1", "1"] and VAR not in os.environ
    assert wrapped.__qualname__ == run.__qualname__ and wrapped.__wrapped__ is run
    assert residency.with_environment(run, None) is run


def _fake_dispatch(monkeypatch, **attributes):
    module = types.ModuleType("mla_plugin.dispatch")
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, "mla_plugin.dispatch", module)


def test_variable_name_comes_from_dispatch_when_it_defines_one(monkeypatch):
    _fake_dispatch(monkeypatch, SM12X_RESIDENCY_ENV="MLA_PLUGIN_SOMETHING_ELSE")
    assert residency.env_name() == "MLA_PLUGIN_SOMETHING_ELSE" and residency.dispatch_defines_env()
    assert residency.variables(True) == {"MLA_PLUGIN_SOMETHING_ELSE": "1"}


def test_variable_name_falls_back_to_the_agreed_one(monkeypatch):
    _fake_dispatch(monkeypatch)
    assert residency.env_name() == "MLA_PLUGIN_SM12X_RESIDENCY" and not residency.dispatch_defines_env()
    assert residency.variables(True) == {"MLA_PLUGIN_SM12X_RESIDENCY": "1"}
    assert residency.variables(False) == {"MLA_PLUGIN_SM12X_RESIDENCY": "0"}  # off means off, whatever the shell says


def test_ctas_per_sm_hopper_fits_two_of_our_ctas_sm12x_one():
    budget = geometry.SMEM_BUDGET_BYTES  # 99 KiB
    assert residency.ctas_per_sm(228 * 1024, budget, reserved_per_cta=1024) == 2  # H100 / H200
    assert residency.ctas_per_sm(100 * 1024, budget, reserved_per_cta=1024) == 1  # SM12x: alone on its SM
    assert residency.ctas_per_sm(228 * 1024, 70 * 1024, reserved_per_cta=1024) == 3  # a smaller CTA
    assert residency.ctas_per_sm(48 * 1024, budget, reserved_per_cta=1024) == 1  # never below one


def test_reserved_bytes_come_from_dispatch(monkeypatch):
    _fake_dispatch(monkeypatch, SM90_RESERVED_SMEM_PER_CTA=2048)
    assert residency.reserved_smem_per_cta() == 2048
    assert residency.ctas_per_sm(2 * (101376 + 2048), 101376) == 2
    assert residency.ctas_per_sm(2 * (101376 + 2048) - 1, 101376) == 1


def test_describe_says_what_is_emulated_and_what_is_not(monkeypatch):
    _fake_dispatch(monkeypatch, SM90_RESERVED_SMEM_PER_CTA=1024)
    d = residency.describe(228 * 1024)
    assert d["emulated"] and d["emulated_ctas_per_sm"] == 1 and d["native_ctas_per_sm_at_budget"] == 2
    assert d["smem_per_cta_budget"] == geometry.SMEM_BUDGET_BYTES
    for word in ("residency only", "clocks", "SM count", "GDDR7", "TRITON_MLA"):
        assert word in d["statement"]
    assert residency.describe(None)["native_ctas_per_sm_at_budget"] is None
    assert d["smem_requested_at_budget"] is None  # this fake dispatch cannot say
    # the FP8 16-row CTA of the SM12x pair-ring build (48936 B): two per SM12x SM, four by Hopper's shared memory
    pair = residency.describe(228 * 1024, smem_per_cta=48936)
    assert pair["emulated_ctas_per_sm"] == 2 and pair["native_ctas_per_sm_at_budget"] == 4


def test_the_real_dispatch_names_the_variable_and_the_request():
    from mla_plugin import dispatch

    assert residency.env_name() == dispatch.SM12X_RESIDENCY_ENV == "MLA_PLUGIN_SM12X_RESIDENCY"
    d = residency.describe(228 * 1024, sm_count=132, name="NVIDIA H200")
    assert d["dispatch_defines_env"] and d["native_ctas_per_sm_at_budget"] == 2
    requested = d["smem_requested_at_budget"]
    assert requested > geometry.SMEM_BUDGET_BYTES and 2 * (requested + 1024) > 228 * 1024  # two no longer fit
    assert residency.describe(100 * 1024, sm_count=170, name="RTX 5090")["smem_requested_at_budget"] == (
        geometry.SMEM_BUDGET_BYTES)  # one CTA already fills an SM12x SM: nothing to add


def test_stray_shell_setting_is_noticed(monkeypatch):
    monkeypatch.setenv(residency.env_name(), "1")
    assert residency.stray_setting() == "1"
    monkeypatch.setenv(residency.env_name(), "0")
    assert residency.stray_setting() is None
    monkeypatch.delenv(residency.env_name())
    assert residency.stray_setting() is None
