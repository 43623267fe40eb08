"""`auto` dtypes resolve to what the machine computes natively."""

import pytest

from medr3 import hardware


@pytest.mark.parametrize("native, dtype, precision", [(True, "bfloat16", "bf16"), (False, "float32", "fp32")])
def test_auto_is_bf16_only_where_it_is_native(monkeypatch, native, dtype, precision):
    monkeypatch.setattr(hardware, "native_bf16", lambda: native)
    assert hardware.resolve_model_dtype("auto") == dtype and hardware.resolve_precision("auto") == precision


def test_an_explicit_setting_is_kept_whatever_the_machine(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda: False)
    assert hardware.resolve_model_dtype("bfloat16") == "bfloat16" and hardware.resolve_precision("bf16") == "bf16"


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    real_path = hardware.Path
    monkeypatch.setattr(hardware, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    cpuinfo.write_text("flags\t: fpu sse2 avx2 avx512f\n")
    assert not hardware.cpu_has_native_bf16()
    cpuinfo.write_text("flags\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert hardware.cpu_has_native_bf16()
