"""Fisher estimation: the fast layerwise path against torch.func and against a plain loop."""

from __future__ import annotations

import pytest
import torch
from conftest import both_ll
from torch import nn

from blip_rl import BlipConv2d, BlipLinear, estimate_fisher


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = BlipConv2d(3, 4, 3, stride=2, padding=1)
        self.fc = BlipLinear(4 * 5 * 5, 8)
        self.pi = BlipLinear(8, 5)
        self.v = BlipLinear(8, 1)
        self.plain = nn.Linear(8, 8)  # not quantized: no Fisher entry

    def forward(self, x):
        h = torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1)))
        h = h + self.plain(h)
        return self.pi(h), self.v(h).squeeze(-1)


def policy_ll(m, x, a):
    return torch.log_softmax(m(x)[0], -1).gather(1, a[:, None]).squeeze(1)


def loop_fisher(model, fn, x, a, weights=(1.0,)):
    """Reference: one backward per sample, a Python loop (what the fast paths replace)."""
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        out = fn(model, x[i : i + 1], a[i : i + 1])
        out = out if out.dim() == 2 else out[:, None]
        for k, w in enumerate(weights):
            model.zero_grad()
            out[0, k].backward(retain_graph=True)
            for n, p in model.named_parameters():
                if p.grad is not None:
                    acc[n] += w * p.grad**2
    return {n: v / len(x) for n, v in acc.items()}


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(37, 3, 10, 10)
    a = torch.randint(0, 5, (37,))
    return model, x, a


@pytest.mark.parametrize("method", ["layerwise", "vmap"])
def test_matches_per_sample_loop(setup, method):
    model, x, a = setup
    ref = loop_fisher(model, policy_ll, x, a)
    got = estimate_fisher(model, policy_ll, (x, a), chunk_size=10, method=method)
    assert set(got) == {f"{m}.{p}" for m in ("conv", "fc", "pi", "v") for p in ("weight", "bias")}
    for n, v in got.items():
        assert v.shape == ref[n].shape
        torch.testing.assert_close(v, ref[n], rtol=1e-4, atol=1e-10)
    # The value head plays no part in the policy term.
    assert float(got["v.weight"].abs().sum()) == 0.0


@pytest.mark.parametrize("method", ["layerwise", "vmap"])
def test_several_terms_add_squares_term_by_term(setup, method):
    model, x, a = setup
    ref = loop_fisher(model, both_ll, x, a, weights=(1.0, 0.5))
    got = estimate_fisher(
        model, both_ll, (x, a), chunk_size=16, method=method, term_weights=[1.0, 0.5]
    )
    for n, v in got.items():
        torch.testing.assert_close(v, ref[n], rtol=1e-4, atol=1e-10)
    assert float(got["v.weight"].abs().sum()) > 0


def test_linear_on_sequences_sums_positions_per_sample():
    torch.manual_seed(1)
    model = nn.Sequential(BlipLinear(4, 3))
    x = torch.randn(6, 5, 4)

    def ll(m, xs):
        return m(xs).sum(dim=(1, 2))

    ref = loop_fisher(model, lambda m, xs, _: ll(m, xs), x, torch.zeros(6))
    got = estimate_fisher(model, ll, x, method="layerwise")
    for n, v in got.items():
        torch.testing.assert_close(v, ref[n], rtol=1e-4, atol=1e-10)


def test_auto_falls_back_to_vmap_when_a_layer_runs_twice():
    torch.manual_seed(2)
    shared = BlipLinear(3, 3)
    model = nn.ModuleDict({"shared": shared})

    def ll(m, xs):
        return m["shared"](torch.tanh(m["shared"](xs))).sum(1)

    x = torch.randn(9, 3)
    ref = loop_fisher(model, lambda m, xs, _: ll(m, xs), x, torch.zeros(9))
    got = estimate_fisher(model, ll, x)  # auto
    for n, v in got.items():
        torch.testing.assert_close(v, ref[n], rtol=1e-4, atol=1e-10)


def test_bad_input(setup):
    model, x, a = setup
    with pytest.raises(ValueError, match="chunk_size"):
        estimate_fisher(model, policy_ll, (x, a), chunk_size=0)
    with pytest.raises(ValueError, match="method"):
        estimate_fisher(model, policy_ll, (x, a), method="loop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch size"):
        estimate_fisher(model, policy_ll, (x, a[:3]))
    with pytest.raises(ValueError, match="one value"):
        estimate_fisher(model, lambda m, xs, acts: m(xs)[0][:, :, None], (x, a))
    with pytest.raises(ValueError, match="no BLIP layers"):
        estimate_fisher(nn.Linear(2, 2), lambda m, xs: m(xs).sum(1), torch.randn(3, 2))
    with pytest.raises(ValueError, match="term_weights"):
        estimate_fisher(model, both_ll, (x, a), term_weights=[1.0, -1.0])
