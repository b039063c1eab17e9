"""The BLIP core: codes, bounds, the exact frozen-prefix invariant, bit growth, state, errors."""

from __future__ import annotations

import io
import math

import conftest
import numpy as np
import pytest
import torch
from conftest import assert_in_bounds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import blip_rl
from blip_rl import BlipConv2d, BlipLinear, attach, blip_stats, code_of, constrain_, freeze
from blip_rl.quant import REFERENCE_FISHER_SCALE, blip_layers


def frozen_prefixes(model: nn.Module) -> dict[str, torch.Tensor]:
    """Top-b bits of every scalar's code (-1 where nothing is frozen), from the public names."""
    return {key: prefix for key, (_, prefix) in conftest.frozen_prefixes(model).items()}


def test_code_is_the_spec_formula():
    torch.manual_seed(0)
    w = (torch.rand(1000) * 2 - 1) * 0.3
    bound, n = 0.25, 20
    expected = np.clip(
        np.floor((w.double().numpy() + bound) / (2 * bound) * 2**n), 0, 2**n - 1
    ).astype(np.int64)
    assert np.array_equal(code_of(w, bound, n).numpy(), expected)


@pytest.mark.parametrize(
    "layer,n",
    [
        (BlipLinear(300, 40), 300),
        (BlipLinear(10, 700), 700),
        (BlipConv2d(4, 32, 8, stride=4), 256),
        (BlipConv2d(3, 64, 3), 64),
    ],
)
def test_layer_state_names_bounds_and_init(layer, n):
    assert isinstance(layer, nn.Linear | nn.Conv2d)
    assert layer.max_bits == 20
    assert layer.weight_bound == pytest.approx(6 / math.sqrt(n))
    assert layer.bias_bound == 1.0
    for p in ("weight", "bias"):
        bits = getattr(layer, f"{p}_bits")
        assert bits.dtype == torch.uint8
        assert bits.shape == getattr(layer, p).shape
        assert int(bits.sum()) == 0
    assert_in_bounds(layer)
    # The prior is the reference's 5e-18 converted to true-Fisher units, times n.
    assert layer.prior == pytest.approx(5e-18 * REFERENCE_FISHER_SCALE * n)
    # Orthogonal init with gain sqrt(2) (rows or columns orthogonal), then clamped: not all zero.
    assert float(layer.weight.detach().abs().max()) > 0
    assert float(layer.bias.detach().abs().max()) == 0


def test_layer_without_bias_has_only_weight_state():
    layer = BlipLinear(5, 3, bias=False)
    assert layer.quantized_names == ("weight",)
    assert not hasattr(layer, "bias_bits")


@pytest.mark.parametrize("bad", [0, 33, -1, 2.5, True])
def test_bad_max_bits_names_the_parameter(bad):
    with pytest.raises(ValueError, match="max_bits"):
        BlipLinear(3, 3, max_bits=bad)
    with pytest.raises(ValueError, match="max_bits"):
        BlipConv2d(3, 3, 3, max_bits=bad)


@pytest.mark.parametrize("bad", [-1e-18, float("nan"), float("inf")])
def test_bad_prior_names_the_parameter(bad):
    with pytest.raises(ValueError, match="f_prior"):
        BlipLinear(3, 3, f_prior=bad)


def _net() -> nn.Sequential:
    return nn.Sequential(
        BlipConv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), BlipLinear(3 * 4 * 4, 5), BlipLinear(5, 2)
    )


def test_fisher_dict_errors_name_the_parameter():
    net = _net()
    good = {n: torch.ones_like(p) for n, p in net.named_parameters()}
    missing = dict(good)
    del missing["3.bias"]
    with pytest.raises(ValueError, match=r"'3\.bias'"):
        freeze(net, missing)
    wrong = dict(good)
    wrong["0.weight"] = torch.ones(3, 2, 3)
    with pytest.raises(ValueError, match=r"'0\.weight'.*shape"):
        freeze(net, wrong)
    neg = dict(good)
    neg["4.weight"] = -torch.ones_like(good["4.weight"])
    with pytest.raises(ValueError, match=r"'4\.weight'"):
        freeze(net, neg)
    # Nothing was frozen by the failed calls.
    assert all(int(s.freezes) == 0 for s in blip_stats(net))
    with pytest.raises(ValueError, match="no BLIP layers"):
        freeze(nn.Linear(2, 2), {})


def test_bit_growth_matches_hand_computation():
    layer = BlipLinear(4, 2, max_bits=20)
    w_old = layer.weight_fisher.double()  # the stored (bfloat16) prior
    b_old = layer.bias_fisher.double()
    # First freeze (t = 0): Fbar_new = (Fbar_old + F) / 2, gain = ceil(0.5 log2(new / old)).
    ratio = torch.tensor([[1.0, 4.0, 16.0, 1.5], [4**5 * 1.0, 4**3 * 1.2, 0.75, 2.0**40]])
    expected = torch.tensor([[0, 1, 2, 1], [5, 4, 0, 20]])  # 2**40 -> 20 gained, capped at N
    fw = (2 * ratio * w_old - w_old).float()
    fb = torch.zeros(2)
    freeze(layer, {"weight": fw, "bias": fb})
    assert torch.equal(layer.weight_bits.long(), expected)
    assert int(layer.bias_bits.sum()) == 0
    assert int(layer.freezes) == 1
    assert torch.allclose(layer.weight_fisher.double(), (w_old + fw.double()) / 2, rtol=1e-2)
    assert torch.allclose(layer.bias_fisher.double(), b_old / 2, rtol=1e-2)
    # Second freeze (t = 1): Fbar_new = (2 Fbar_old + F) / 3; ask for ratio 4 -> one more bit.
    w1 = layer.weight_fisher.double()
    fw2 = (3 * 4 * w1 - 2 * w1).float()
    freeze(layer, {"weight": fw2, "bias": fb})
    assert torch.equal(layer.weight_bits.long(), torch.clamp(expected + 1, max=20))
    assert int(layer.freezes) == 2


def test_prefix_is_top_bits_of_code_at_freeze():
    torch.manual_seed(1)
    layer = BlipLinear(16, 8)
    w_before = layer.weight.detach().clone()
    f = layer.weight_fisher.float() * 2.0 ** torch.randint(0, 30, layer.weight.shape)
    freeze(layer, {"weight": f, "bias": torch.zeros(8)})
    bits = layer.weight_bits.long()
    code = code_of(w_before, layer.weight_bound, 20)
    assert torch.equal(torch.where(bits > 0, code >> (20 - bits), 0), layer.weight_prefix.long())
    # A freeze does not move the weights (they already lie in their new bins).
    assert torch.equal(layer.weight.detach(), w_before)


def test_zero_fisher_freezes_nothing():
    net = _net()
    zero = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for _ in range(3):
        freeze(net, zero)
    assert all(sum(s.histogram[1:]) == 0 for s in blip_stats(net))
    assert all(s.freezes == 3 for s in blip_stats(net))


def test_bits_never_exceed_max_and_never_shrink():
    torch.manual_seed(2)
    net = nn.Sequential(BlipLinear(6, 6, max_bits=7), BlipConv2d(1, 2, 2, max_bits=5))
    prev = {n: torch.zeros_like(p, dtype=torch.long) for n, p in net.named_parameters()}
    for step in range(8):
        fisher = {
            n: torch.rand_like(p) * 10.0 ** torch.randint(-20, 10, p.shape)
            if step % 3
            else torch.zeros_like(p)
            for n, p in net.named_parameters()
        }
        freeze(net, fisher)
        for name, layer in blip_layers(net):
            for p in layer.quantized_names:
                bits = getattr(layer, f"{p}_bits").long()
                assert int(bits.max()) <= layer.max_bits
                assert bool((bits >= prev[f"{name}.{p}"]).all())
                prev[f"{name}.{p}"] = bits


def _step_with(net: nn.Module, opt: torch.optim.Optimizer, grads: list[torch.Tensor]) -> None:
    for p, g in zip(net.parameters(), grads, strict=True):
        p.grad = g
    opt.step()


def test_attach_keeps_prefixes_under_huge_steps():
    torch.manual_seed(3)
    net = _net()
    freeze(net, {n: torch.rand_like(p) * 1e-4 for n, p in net.named_parameters()})
    before = frozen_prefixes(net)
    assert any(bool((v >= 0).any()) for v in before.values())
    opt = torch.optim.SGD(net.parameters(), lr=1e3)
    handle = attach(opt, net)
    for _ in range(20):
        _step_with(net, opt, [torch.randn_like(p) for p in net.parameters()])
    after = frozen_prefixes(net)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert_in_bounds(net)
    # Without the hook the same steps break the prefixes: the check above can fail.
    handle.remove()
    _step_with(net, opt, [torch.randn_like(p) for p in net.parameters()])
    broken = frozen_prefixes(net)
    assert not all(torch.equal(before[k], broken[k]) for k in before)


def test_state_dict_round_trip_keeps_bits_and_constraint():
    torch.manual_seed(4)
    net = _net()
    freeze(net, {n: torch.rand_like(p) * 1e-6 for n, p in net.named_parameters()})
    freeze(net, {n: torch.rand_like(p) * 1e-5 for n, p in net.named_parameters()})
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    fresh = _net()
    fresh.load_state_dict(torch.load(buf))
    for k, v in net.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    # The loaded model is constrained by the loaded prefixes, not by its own fresh state.
    before = frozen_prefixes(fresh)
    opt = torch.optim.Adam(fresh.parameters(), lr=10.0)
    attach(opt, fresh)
    for _ in range(10):
        _step_with(fresh, opt, [torch.randn_like(p) for p in fresh.parameters()])
    assert all(torch.equal(before[k], frozen_prefixes(fresh)[k]) for k in before)
    # The state that is saved: bits, prefix, running Fisher and the freeze count.
    keys = set(net.state_dict())
    for suffix in ("weight_bits", "weight_prefix", "weight_fisher", "bias_bits", "freezes"):
        assert f"0.{suffix}" in keys


def test_persistent_memory_is_at_most_8_bytes_per_parameter_and_constant():
    net = _net()
    n_params = sum(p.numel() for p in net.parameters())

    def state_bytes() -> int:
        return sum(
            v.numel() * v.element_size()
            for k, v in net.state_dict().items()
            if not (k.endswith(".weight") or k.endswith(".bias"))
        )

    first = state_bytes()
    for _ in range(5):
        freeze(net, {n: torch.rand_like(p) for n, p in net.named_parameters()})
    assert state_bytes() == first
    # Per-layer freeze counters are a few bytes per layer, not per parameter.
    assert (first - 3 * 8) / n_params <= 8
    assert all(s.persistent_bytes_per_param <= 8 for s in blip_stats(net))


def test_blip_stats_report():
    layer = BlipLinear(4, 2)
    w_old = layer.weight_fisher.float()
    freeze(layer, {"weight": w_old * (2 * 16 - 1), "bias": torch.zeros(2)})  # 2 bits everywhere
    s = {x.name: x for x in blip_stats(layer)}
    assert s["weight"].histogram[2] == 8 and sum(s["weight"].histogram) == 8
    assert s["weight"].mean_bits == 2.0 and s["weight"].frac_frozen == 1.0
    assert s["bias"].frac_frozen == 0.0
    assert "weight" in blip_rl.format_stats(blip_stats(layer))


def test_reset_parameters_refuses_after_freeze():
    layer = BlipLinear(4, 2)
    freeze(layer, {"weight": torch.ones(2, 4), "bias": torch.ones(2)})
    with pytest.raises(RuntimeError):
        layer.reset_parameters()


# ---------------------------------------------------------------- the exact invariant, by property

_float_edges = st.sampled_from([0, 1, -1, 2, -2, 7, -7])


@st.composite
def scenario(draw):
    kind = draw(st.sampled_from(["linear", "conv"]))
    max_bits = draw(st.sampled_from([1, 3, 8, 16, 20, 23, 24, 26, 31, 32]))
    seed = draw(st.integers(0, 2**31 - 1))
    edge_shift = draw(_float_edges)
    log_fisher = draw(st.floats(-20, 8))
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["sgd", "adam"]),
                st.floats(-8, 4),  # log10 lr
                st.floats(-30, 30),  # log10 gradient scale
            ),
            min_size=1,
            max_size=6,
        )
    )
    return kind, max_bits, seed, edge_shift, log_fisher, steps


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_no_optimizer_step_changes_a_frozen_prefix(case):
    kind, max_bits, seed, edge_shift, log_fisher, steps = case
    gen = torch.Generator().manual_seed(seed)
    if kind == "linear":
        layer: nn.Module = BlipLinear(7, 5, max_bits=max_bits)
    else:
        layer = BlipConv2d(2, 3, 2, max_bits=max_bits)
    # Put some weights exactly on (or a few float32 steps around) bin edges, and some at +-B.
    with torch.no_grad():
        for p in layer.quantized_names:
            param = getattr(layer, p)
            bound = getattr(layer, f"{p}_bound")
            bits_at = int(torch.randint(1, max_bits + 1, (1,), generator=gen))
            k = torch.randint(0, 2**bits_at, param.shape, generator=gen).double()
            edge = (k / 2**bits_at * 2 * bound - bound).float()
            for _ in range(abs(edge_shift)):
                edge = torch.nextafter(edge, torch.tensor(math.copysign(math.inf, edge_shift)))
            pick = torch.rand(param.shape, generator=gen) < 0.7
            param.copy_(torch.where(pick, edge, param))
            param.view(-1)[0] = -bound
            param.view(-1)[-1] = math.nextafter(bound, 0.0)
        constrain_(layer)
    fisher = {
        p: getattr(layer, f"{p}_fisher").float()
        * 10.0 ** (log_fisher + 4 * torch.rand(getattr(layer, p).shape, generator=gen))
        for p in layer.quantized_names
    }
    freeze(layer, fisher)
    before = frozen_prefixes(layer)
    for opt_name, log_lr, log_scale in steps:
        lr = 10.0**log_lr
        opt = (
            torch.optim.SGD(layer.parameters(), lr=lr)
            if opt_name == "sgd"
            else torch.optim.Adam(layer.parameters(), lr=lr)
        )
        attach(opt, layer)
        for p in layer.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 10.0**log_scale
        opt.step()
        after = frozen_prefixes(layer)
        for key in before:
            assert torch.equal(before[key], after[key]), (key, max_bits)
        assert_in_bounds(layer)


@pytest.mark.parametrize("max_bits", [1, 2, 12, 20, 27, 32])
def test_constraint_interval_is_exact_not_just_safe(max_bits):
    """Each interval end is inside its bin and the next float32 outward is not (or is past B)."""
    torch.manual_seed(max_bits)
    layer = BlipLinear(40, 30, max_bits=max_bits)
    with torch.no_grad():  # include weights at 0 and around it, where float64 rounding bites
        layer.weight.view(-1)[:5] = torch.tensor([0.0, -1e-30, 1e-30, -1e-12, 1e-12])
    ratio = 4.0 ** torch.randint(0, 17, layer.weight.shape)
    fw = layer.weight_fisher.float() * (2 * ratio - 1)
    freeze(layer, {"weight": fw, "bias": torch.zeros(30)})
    bits = layer.weight_bits.long()
    lo, hi = layer._weight_lo, layer._weight_hi
    bound, n = layer.weight_bound, max_bits

    def prefix_of(f):
        return code_of(f, bound, n) >> (n - bits)

    sel = bits > 0
    pre = layer.weight_prefix.long()
    assert torch.equal(prefix_of(lo)[sel], pre[sel]) and torch.equal(prefix_of(hi)[sel], pre[sel])
    below = torch.nextafter(lo, torch.tensor(-math.inf))
    above = torch.nextafter(hi, torch.tensor(math.inf))
    out_lo = (prefix_of(below) != pre) | (below.double() < -bound)
    out_hi = (prefix_of(above) != pre) | (above.double() >= bound)
    assert bool(out_lo[sel].all()) and bool(out_hi[sel].all())
    assert bool((lo <= layer.weight.detach()).all()) and bool((layer.weight.detach() <= hi).all())
