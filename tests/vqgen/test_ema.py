"""The EMA of weights (`--use_ema`): its warm-up and decay, what it averages, swapping it in, and its checkpoint."""

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from stage1_tokenizer import VQVAE
from vqgen.ema import EMA, EMA_FILE


class Net(torch.nn.Module):
    """Trained weights, a frozen parameter and a buffer: only the first are averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
        self.register_buffer("count", torch.zeros(()))


def nudge(net: Net, value: float) -> None:
    with torch.no_grad():
        for p in net.linear.parameters():
            p.fill_(value)
        net.frozen.fill_(value)
        net.count.fill_(value)


def test_the_decay_warms_up_as_one_plus_t_over_ten_plus_t_and_stops_at_max_decay():
    ema = EMA(Net(), max_decay=0.99)
    assert [ema.decay(t) for t in (0, 1, 8)] == pytest.approx([0.1, 2 / 11, 0.5])
    assert ema.decay(10_000) == 0.99 and EMA(Net(), max_decay=0.0).decay(5) == 0.0


def test_updates_follow_the_recurrence_from_the_first_weights():
    net = Net()
    nudge(net, 0.0)
    ema = EMA(net, max_decay=0.5)
    expected = 0.0
    for t, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        nudge(net, value)
        ema.update()
        decay = min(0.5, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * value
    assert ema.num_updates == 4
    assert all(torch.allclose(s, torch.full_like(s, expected)) for s in ema.shadow)
    assert ema.names == ["linear.weight", "linear.bias"]  # the frozen parameter is not averaged


def test_averaged_swaps_in_the_trained_parameters_only_and_restores_them_exactly():
    net = Net()
    nudge(net, 1.0)
    ema = EMA(net, max_decay=0.9)
    nudge(net, 5.0)
    ema.update()  # decay 0.1: the average is 0.1 * 1 + 0.9 * 5
    own = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError, match="inside"), ema.averaged():
        assert torch.allclose(net.linear.weight, torch.full((2, 3), 4.6))
        assert net.frozen.eq(5.0).all() and net.count == 5.0  # live, as they are
        raise RuntimeError("inside")
    for key, value in net.state_dict().items():
        assert torch.equal(value, own[key]), key


def test_the_vq_codebook_is_averaged_only_when_the_optimizer_learns_it():
    # an EMA codebook is updated by the quantiser itself (requires_grad False, counts in buffers): kept live
    assert "quantizer.codebook" not in EMA(VQVAE(codebook_size=8, code_dim=4, channels=8), 0.9).names
    assert "quantizer.codebook" in EMA(VQVAE(codebook_size=8, code_dim=4, channels=8, ema_decay=None), 0.9).names


def test_save_state_and_load_state_carry_the_ema_as_safetensors(tmp_path):
    accelerator = Accelerator(cpu=True)
    net = accelerator.prepare(Net())
    ema = EMA(net, max_decay=0.9)
    ema.checkpoint_with(accelerator)
    nudge(net, 2.0)
    ema.update()
    ema.update()
    accelerator.save_state(str(tmp_path / "checkpoint"))
    saved = load_file(tmp_path / "checkpoint" / EMA_FILE)
    assert saved.keys() == {"linear.weight", "linear.bias"}
    assert not any(p.name.startswith("custom_checkpoint") for p in (tmp_path / "checkpoint").iterdir())

    fresh = Accelerator(cpu=True)
    net2 = fresh.prepare(Net())
    ema2 = EMA(net2, max_decay=0.9)
    ema2.checkpoint_with(fresh)
    fresh.load_state(str(tmp_path / "checkpoint"))
    assert ema2.num_updates == 2
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow, ema2.shadow))
    with pytest.raises(ValueError, match=r"missing \['linear.bias'\]"):
        ema2.load_state_dict({"num_updates": 1, "shadow": {"linear.weight": torch.zeros(2, 3)}})

    (tmp_path / "checkpoint" / EMA_FILE).unlink()
    with pytest.raises(SystemExit, match="saved without --use_ema"):
        fresh.load_state(str(tmp_path / "checkpoint"))
