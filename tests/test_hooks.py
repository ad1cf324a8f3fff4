"""HookPoint / HookedModule / ActivationCache on a tiny module (no model weights needed)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from wclab.errors import HookError
from wclab.models.hooks import ActivationCache, HookedModule, HookPoint


class Tiny(HookedModule):
    """x -> hook_pre -> linear -> inner.hook_mid -> out; hook_costly (opt-in) only computed when hooked."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 3)
        self.inner = nn.Module()
        self.inner.hook_mid = HookPoint()
        self.hook_pre = HookPoint()
        self.hook_costly = HookPoint(opt_in=True)
        self.costly_computed = 0
        self.setup_hooks()

    def forward(self, x):
        y = self.inner.hook_mid(self.lin(self.hook_pre(x)))
        if self.hook_costly.active:
            self.costly_computed += 1
            self.hook_costly(y * 2)
        return y


@pytest.fixture
def tiny():
    return Tiny()


X = torch.arange(6.0).reshape(2, 3)


def test_hook_points_are_named_after_their_path_in_the_module_tree(tiny):
    points = tiny.hook_points()
    assert set(points) == {"inner.hook_mid", "hook_pre", "hook_costly"}
    assert all(hp.name == name for name, hp in points.items())


def test_hook_point_without_hooks_returns_its_input_object():
    hp = HookPoint()
    assert hp(X) is X and not hp.active


def test_hook_receives_tensor_and_hook_point_and_none_leaves_output_unchanged(tiny):
    seen = []
    expected = tiny(X)
    with tiny.hooks([("inner.hook_mid", lambda t, hook: seen.append((hook.name, t.shape)))]):
        out = tiny(X)
    assert seen == [("inner.hook_mid", (2, 3))]
    assert torch.equal(out, expected)


def test_returned_tensor_replaces_activation_and_hooks_chain_in_order(tiny):
    with tiny.hooks([("inner.hook_mid", lambda t, hook: t + 1), ("inner.hook_mid", lambda t, hook: t * 10)]):
        out = tiny(X)
    assert torch.equal(out, (tiny(X) + 1) * 10)


def test_hooks_context_removes_hooks_even_when_body_raises(tiny):
    with pytest.raises(RuntimeError):
        with tiny.hooks([(lambda n: True, lambda t, hook: t * 0)]):
            assert all(hp.active for hp in tiny.hook_points().values())
            raise RuntimeError("boom")
    assert not any(hp.active for hp in tiny.hook_points().values())


def test_add_hook_persists_until_removed_and_reset_hooks_clears_all(tiny):
    remove = tiny.add_hook("hook_pre", lambda t, hook: t * 0)
    assert tiny.hook_points()["hook_pre"].active
    remove()
    assert not tiny.hook_points()["hook_pre"].active
    tiny.add_hook(["hook_pre", "inner.hook_mid"], lambda t, hook: None)
    tiny.reset_hooks()
    assert not any(hp.active for hp in tiny.hook_points().values())


def test_unknown_hook_name_raises_hook_error_with_did_you_mean(tiny):
    with pytest.raises(HookError, match=r"Did you mean: inner\.hook_mid") as err:
        with tiny.hooks([("inner.hook_mdi", lambda t, hook: None)]):
            pass
    assert isinstance(err.value, KeyError)
    assert not any(hp.active for hp in tiny.hook_points().values())


def test_filter_matching_no_hook_point_raises(tiny):
    with pytest.raises(HookError, match="matched no hook point"):
        tiny.run_with_cache(X, names_filter=lambda n: n.startswith("nothing"))


def test_hook_returning_a_non_tensor_raises_naming_the_hook(tiny):
    with pytest.raises(HookError, match="'hook_pre' returned int"):
        with tiny.hooks([("hook_pre", lambda t, hook: 3)]):
            tiny(X)


def test_run_with_cache_stores_only_filtered_activations_detached(tiny):
    out, cache = tiny.run_with_cache(X.clone().requires_grad_(True), names_filter="inner.hook_mid")
    assert list(cache) == ["inner.hook_mid"]
    assert torch.equal(cache["inner.hook_mid"], out) and out.requires_grad
    assert not cache["inner.hook_mid"].requires_grad
    _, cache = tiny.run_with_cache(X, names_filter=lambda n: n.startswith("hook_"))
    assert list(cache) == ["hook_pre", "hook_costly"]
    assert not any(hp.active for hp in tiny.hook_points().values())


def test_run_with_cache_default_skips_opt_in_points_which_are_then_not_computed(tiny):
    _, cache = tiny.run_with_cache(X)
    assert list(cache) == ["hook_pre", "inner.hook_mid"]
    assert tiny.costly_computed == 0
    _, cache = tiny.run_with_cache(X, names_filter=["hook_costly"])
    assert tiny.costly_computed == 1 and torch.equal(cache["hook_costly"], tiny(X) * 2)


def test_run_with_cache_moves_tensors_to_the_requested_device(tiny):
    _, cache = tiny.run_with_cache(X, device="meta")
    assert all(t.device.type == "meta" for t in cache.values())
    _, cache = tiny.run_with_cache(X)
    moved = cache.to("meta")
    assert isinstance(moved, ActivationCache) and moved["hook_pre"].device.type == "meta"
    assert cache["hook_pre"].device.type == "cpu"  # the original cache is untouched


def test_activation_cache_unknown_key_suggests_close_names(tiny):
    _, cache = tiny.run_with_cache(X)
    with pytest.raises(HookError, match=r"Did you mean: hook_pre"):
        cache["hook_pr"]
