"""Attention backend switch: which kernel each setting picks, how flash packages are recognised, and the flash
custom op (with stand-in flash modules: no flash kernel runs on a CPU)."""
import sys
import textwrap
import types

import pytest
import torch

import wclab.models.attention as A
from wclab.models.attention import (
    AttentionBackendError,
    attention,
    attention_backend,
    attention_from_probs,
    attention_logits,
    find_installed_flash,
)


def reference(q, k, v):
    return attention_from_probs(attention_logits(q, k).softmax(-1), v)


def qkv(lq=7, lk=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, n, 3, 8, generator=g) for n in (lq, lk, lk)]


@pytest.fixture
def stand_in_flash(monkeypatch):
    """Pretend "flash3" and "flash4" are installed: stand-in modules whose flash_attn_func computes exact
    attention (flash3's returning (out, lse) like some releases), and flash kernels applying to CPU tensors."""
    calls = []

    def kernel(name, with_lse):
        def flash_attn_func(q, k, v):
            calls.append(name)
            out = reference(q, k, v)
            return (out, torch.zeros(q.shape[:3])) if with_lse else out
        return flash_attn_func

    for module, name, with_lse in (("flash_attn_interface", "flash3", True), ("flash_attn.cute", "flash4", False)):
        monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(flash_attn_func=kernel(name, with_lse)))
    monkeypatch.setattr(A, "_INSTALLED", {"flash3": True, "flash4": True, "flash2": False})
    monkeypatch.setattr(A, "_AUTO", "flash3")
    monkeypatch.setattr(A, "_flash_applies", lambda q, bias: bias is None)
    A._flash_import.cache_clear()
    yield calls
    A._flash_import.cache_clear()


def test_auto_prefers_flash3_then_flash4_then_flash2():
    assert A.AUTO_ORDER == ("flash3", "flash4", "flash2")
    assert A._AUTO == next((b for b in A.AUTO_ORDER if A._flash_kernel(b) is not None), "sdpa")


def test_auto_skips_a_flash_package_that_is_installed_but_does_not_import(tmp_path, monkeypatch):
    """As seen on a GPU machine: flash_attn.cute was found on the path but its CUTLASS DSL dependency was not, so
    every attention call under "auto" failed. Now "auto" warns, naming the import error, and uses the next one."""
    pkg = tmp_path / "flash_attn"
    (pkg / "cute").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cute" / "__init__.py").write_text("import cutlass_dsl_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("flash_attn", "flash_attn.cute"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(A, "_INSTALLED", {**find_installed_flash(), "flash3": False, "flash2": False})
    A._flash_import.cache_clear()
    try:
        assert A._INSTALLED["flash4"]
        with pytest.warns(UserWarning, match=r"'flash4' is installed, but importing 'flash_attn.cute' fails: "
                                             r".*cutlass_dsl_that_is_missing.*'auto' skips it"):
            assert A._resolve_auto() == "sdpa"
        with pytest.raises(AttentionBackendError, match="cutlass_dsl_that_is_missing"):
            A.set_attention_backend("flash4")
    finally:
        A._flash_import.cache_clear()


def test_each_flash_setting_calls_its_kernel_and_matches_exact_attention(stand_in_flash):
    q, k, v = qkv()
    for backend in ("auto", "flash3", "flash4"):
        with attention_backend(backend):
            torch.testing.assert_close(attention(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-6)
    assert stand_in_flash == ["flash3", "flash3", "flash4"]


def test_calls_with_a_bias_use_sdpa_under_flash_settings(stand_in_flash):
    q, k, v = qkv()
    bias = torch.randn(1, 1, 7, 5)
    with attention_backend("flash4"):
        out = attention(q, k, v, bias)
    assert stand_in_flash == []
    torch.testing.assert_close(out, attention_from_probs(attention_logits(q, k, bias).softmax(-1), v),
                               rtol=1e-5, atol=1e-5)


def test_flash_kernel_is_one_opaque_op_under_torch_compile(stand_in_flash):
    q, k, v = qkv()
    compiled = torch.compile(lambda q, k, v: attention(q, k, v) * 2, backend="eager", fullgraph=True)
    with attention_backend("flash4"):
        out = compiled(q, k, v)
    torch.testing.assert_close(out, 2 * reference(q, k, v), rtol=1e-5, atol=1e-6)
    assert stand_in_flash == ["flash4"]
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fq, fk, fv = torch.empty(2, 7, 3, 8), torch.empty(2, 5, 3, 8), torch.empty(2, 5, 3, 16)
        assert A.flash_attention(fq, fk, fv, "flash4").shape == (2, 7, 3, 16)


def test_selecting_a_flash_backend_that_is_not_installed_names_the_module(monkeypatch):
    monkeypatch.setattr(A, "_INSTALLED", {"flash3": False, "flash4": False, "flash2": False})
    A._flash_import.cache_clear()
    try:
        for backend, module in (("flash3", "flash_attn_interface"), ("flash4", "flash_attn.cute"),
                                ("flash2", "flash_attn")):
            with pytest.raises(AttentionBackendError, match=rf"{backend}.*'{module}'.*not installed"):
                A.set_attention_backend(backend)
        assert A.get_attention_backend() == "auto"
        assert A.available_backends() == ["auto", "sdpa", "math"]
    finally:
        A._flash_import.cache_clear()


def test_flash_attn_4_alone_is_not_taken_for_flash_attention_2(tmp_path, monkeypatch):
    """flash-attn-4 installs the package ``flash_attn`` with only ``flash_attn.cute`` inside; FA2 is recognised
    by its compiled extension ``flash_attn_2_cuda``, so FA4 alone makes "flash4" available, not "flash2"."""
    pkg = tmp_path / "flash_attn"
    (pkg / "cute").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cute" / "__init__.py").write_text(textwrap.dedent("""
        def flash_attn_func(q, k, v):
            raise RuntimeError("stand-in")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("flash_attn", "flash_attn.cute"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    found = find_installed_flash()
    assert found["flash4"] is True
    assert found["flash2"] is False
