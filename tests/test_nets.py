"""ActorCritic: shapes, dtypes, heads per game, names, init, BLIP vs plain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blip_rl.nets import PAPER_NET, ActorCritic, NetConfig
from blip_rl.quant import BlipConv2d, BlipLayer, BlipLinear, blip_parameters


def _obs(batch: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("blip", [True, False])
def test_shapes_and_dtypes(blip: bool) -> None:
    torch.manual_seed(0)
    net = ActorCritic([4, 6], NetConfig(blip=blip))
    obs = _obs()
    for head, n in enumerate([4, 6]):
        logits, value = net(obs, head)
        assert logits.shape == (3, n) and logits.dtype == torch.float32
        assert value.shape == (3,) and value.dtype == torch.float32
        action, logprob, entropy, v = net.get_action_and_value(obs, head)
        assert action.shape == (3,) and action.dtype == torch.int64
        assert int(action.min()) >= 0 and int(action.max()) < n
        for t in (logprob, entropy, v):
            assert t.shape == (3,) and t.dtype == torch.float32
        assert torch.allclose(v, value)
        # Given actions give their log-probs.
        _, lp, _, _ = net.get_action_and_value(obs, head, torch.zeros(3, dtype=torch.int64))
        assert torch.allclose(lp, torch.log_softmax(logits, -1)[:, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, logprob, entropy, v = net.get_action_and_value(obs, 1)
    assert logprob.dtype == entropy.dtype == v.dtype == torch.float32


def test_layer_types_and_names() -> None:
    blip = ActorCritic([4, 18], NetConfig(blip=True))
    plain = ActorCritic([4, 18], NetConfig(blip=False))
    names = [n for n, _ in blip.named_parameters()]
    assert names == [n for n, _ in plain.named_parameters()]
    expected = ["trunk.conv1", "trunk.conv2", "trunk.conv3", "trunk.fc"]
    expected += ["heads.policy.0", "heads.policy.1", "heads.value.0", "heads.value.1"]
    assert names == [f"{m}.{p}" for m in expected for p in ("weight", "bias")]
    for name in expected:
        b, p = blip.get_submodule(name), plain.get_submodule(name)
        assert isinstance(b, BlipConv2d | BlipLinear)
        assert not isinstance(p, BlipLayer)
        assert type(p) in (nn.Conv2d, nn.Linear)
    assert [n for n, _ in blip_parameters(blip)] == names
    assert blip.trunk.fc.in_features == 64 * 7 * 7 and blip.trunk.fc.out_features == 512
    assert blip.policy_head(1).out_features == 18 and blip.value_head(1).out_features == 1


def test_paper_preset_shapes() -> None:
    net = ActorCritic([18], PAPER_NET)
    assert net.trunk.conv3.out_channels == 128
    assert net.trunk.fc.in_features == 128 * 7 * 7 and net.trunk.fc.out_features == 1024
    logits, value = net(_obs(2), 0)
    assert logits.shape == (2, 18) and value.shape == (2,)


def test_blip_and_plain_start_identical() -> None:
    torch.manual_seed(123)
    blip = ActorCritic([4, 6], NetConfig(blip=True))
    torch.manual_seed(123)
    plain = ActorCritic([4, 6], NetConfig(blip=False))
    for (name, a), (_, b) in zip(blip.named_parameters(), plain.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    obs = _obs()
    assert torch.equal(blip(obs, 1)[0], plain(obs, 1)[0])


def test_init_gains_and_bounds() -> None:
    torch.manual_seed(0)
    net = ActorCritic([6], NetConfig())
    pol, val = net.policy_head(0).weight, net.value_head(0).weight
    # Orthogonal rows: norm = gain (0.01 for the policy, 1 for the value head).
    assert torch.allclose(pol.norm(dim=1), torch.full((6,), 0.01), rtol=1e-3)
    assert torch.allclose(val.norm(dim=1), torch.ones(1), rtol=1e-3)
    for _, layer in net.named_modules():
        if isinstance(layer, BlipConv2d | BlipLinear):
            w = layer.weight.detach()
            assert float(w.min()) >= -layer.weight_bound and float(w.max()) < layer.weight_bound
            assert float(layer.bias.detach().abs().max()) == 0.0
    # The initial policy is close to uniform.
    _, _, entropy, _ = net.get_action_and_value(_obs(), 0)
    assert torch.allclose(entropy, torch.full((3,), float(torch.log(torch.tensor(6.0)))), atol=1e-2)


def test_only_the_chosen_head_gets_gradients() -> None:
    net = ActorCritic([4, 6, 3], NetConfig())
    logits, value = net(_obs(), 1)
    (logits.sum() + value.sum()).backward()
    for k in range(3):
        has_grad = net.policy_head(k).weight.grad is not None
        assert has_grad == (k == 1)
        assert (net.value_head(k).weight.grad is not None) == (k == 1)
    assert net.trunk.conv1.weight.grad is not None


def test_channels_last_and_float_input_match() -> None:
    torch.manual_seed(0)
    net = ActorCritic([4], NetConfig())
    obs = _obs()
    ref_logits, ref_value = net(obs, 0)
    net_cl = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    logits, value = net_cl(obs.contiguous(memory_format=torch.channels_last), 0)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert torch.allclose(value, ref_value, atol=1e-5)
    logits_f, _ = net(obs.float(), 0)
    assert torch.allclose(logits_f, ref_logits, atol=1e-5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="action_counts"):
        ActorCritic([], NetConfig())
    with pytest.raises(ValueError, match="action_counts"):
        ActorCritic([4, 0], NetConfig())
    net = ActorCritic([4], NetConfig())
    with pytest.raises(IndexError, match="head=1"):
        net(_obs(), 1)
