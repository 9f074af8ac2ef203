"""register() in the test process: idempotent, pickles the member by name, refuses a
name clash, and steps aside from a vLLM without the registry."""

from __future__ import annotations

import logging
import pickle
import sys

import pytest

import mla_plugin
from mla_plugin import registration


def _enum():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum


def test_register_is_idempotent():
    mla_plugin.register()
    member = _enum()["MLA_XQA_SM120"]
    names_before = list(_enum().__members__)
    for _ in range(3):
        mla_plugin.register()
    assert _enum()["MLA_XQA_SM120"] is member
    assert list(_enum().__members__) == names_before
    assert member.get_path() == "mla_plugin.backend.XqaMlaBackend"


def test_member_pickles_by_name():
    mla_plugin.register()
    member = _enum()["MLA_XQA_SM120"]
    payload = pickle.dumps(member)
    assert b"restore_backend" in payload and b"XqaMlaBackend" not in payload
    assert pickle.loads(payload) is member


def test_other_members_keep_their_pickling():
    mla_plugin.register()
    triton = _enum()["TRITON_MLA"]
    assert b"restore_backend" not in pickle.dumps(triton)
    assert pickle.loads(pickle.dumps(triton)) is triton


def test_name_taken_by_another_class_is_an_error(monkeypatch):
    mla_plugin.register()
    member = _enum()["MLA_XQA_SM120"]
    monkeypatch.setattr(member, "_value_", "someone.else.Backend")
    with pytest.raises(RuntimeError, match="already taken by 'someone.else.Backend'"):
        mla_plugin.register()


def test_vllm_without_registry_gets_a_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "vllm.v1.attention.backends.registry", None)
    with caplog.at_level(logging.WARNING, logger=registration.__name__):
        assert mla_plugin.register() is None
    assert "cannot register MLA_XQA_SM120" in caplog.text
    assert "vllm==0.33.0" in caplog.text
