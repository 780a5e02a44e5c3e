"""The shared training loop on a one-weight model, in-process: when it evaluates, what it records, when it stops."""

import json

import pytest
import torch

from vqgen.training import make_accelerator, parse_training_args, prepare_training, training_parser
from vqgen.training_loop import finish_training, train_loop


class Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor([float(i), 1.0])}


def start(tmp_path, *flags, auxiliary=()):
    p = training_parser("test", "a test", [])
    args = parse_training_args(p, ["--output_dir", str(tmp_path), "--batch_size", "4", "--warmup_steps", "0",
                                   "--checkpointing_steps", "0", "--eval_steps", "1000", *flags])
    accelerator = make_accelerator(args)
    model = torch.nn.Linear(2, 1)
    state = prepare_training(accelerator, model, Points(), None, args, auxiliary=[(m, None) for m in auxiliary])
    return args, accelerator, state


def squared(state, seen=None):
    def compute_loss(batch, step):
        if seen is not None:
            seen.append(step)
        return state.model(batch["x"]).pow(2).mean(), None
    return compute_loss


def test_evaluates_every_eval_steps_and_at_the_last_step_once_with_a_metrics_row_each(tmp_path):
    args, accelerator, state = start(tmp_path, "--max_steps", "5", "--eval_steps", "2", "--gradient_accumulation_steps", "2")
    seen, evaluated, hooked = [], [], []

    def evaluate(step):
        evaluated.append(step)
        return {"test/step": float(step)}

    result = train_loop(accelerator, args, state, squared(state, seen), evaluate, hook=lambda *a: hooked.append(a),
                        record_extras=lambda seconds: {"train/extra": 1})
    assert evaluated == [2, 4, 5]
    assert seen == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # two micro-batches a step, each told the step they make
    assert hooked == [(1, False), (2, True), (3, False), (4, True), (5, True)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 5] and all(r["test/step"] == r["step"] for r in rows)
    assert all({"train/loss", "elapsed_s", "train/extra"} <= r.keys() for r in rows)
    assert result.step == 5 and result.metrics == {"test/step": 5.0} and result.summary()["steps"] == 5


def test_a_run_stopped_by_its_time_limit_is_evaluated_once_at_the_step_it_stopped(tmp_path, capsys):
    args, accelerator, state = start(tmp_path, "--max_steps", "5", "--eval_steps", "2", "--max_train_minutes", "0")
    evaluated = []
    result = train_loop(accelerator, args, state, squared(state), lambda step: evaluated.append(step) or {"test/m": 1.0})
    assert result.step == 1 and evaluated == [1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "logs" / "vqgen"))
    events.Reload()
    assert [e.step for e in events.Scalars("test/m")] == [1]  # the tracker has that evaluation too
    out, err = capsys.readouterr()
    assert "stopping at step 1: --max_train_minutes 0.0 reached" in out + err


def test_a_run_resumed_at_its_last_step_trains_nothing_and_evaluates_once(tmp_path):
    args, accelerator, state = start(tmp_path, "--max_steps", "3")
    state.step, seen, evaluated = 3, [], []
    result = train_loop(accelerator, args, state, squared(state, seen), lambda step: evaluated.append(step) or {})
    assert (result.step, seen, evaluated) == (3, [], [3])


def test_a_non_finite_loss_stops_naming_the_step(tmp_path):
    args, accelerator, state = start(tmp_path, "--max_steps", "5")

    def compute_loss(batch, step):
        loss = state.model(batch["x"]).pow(2).mean()
        return loss * float("nan") if step == 2 else loss, None

    with pytest.raises(FloatingPointError, match="loss became nan at step 3"):
        train_loop(accelerator, args, state, compute_loss, lambda step: {})


def test_the_auxiliary_loss_is_taken_once_per_optimizer_step_after_the_model_stepped(tmp_path):
    critic = torch.nn.Linear(1, 1)
    args, accelerator, state = start(tmp_path, "--max_steps", "3", "--gradient_accumulation_steps", "2",
                                     auxiliary=[critic])
    taken = []

    def compute_loss(batch, step):
        out = state.model(batch["x"])

        def auxiliary():
            taken.append((step, state.optimizer.state_dict()["state"][0]["step"].item()))
            return critic(out.detach()).pow(2).mean()
        return out.pow(2).mean(), auxiliary

    before = critic.weight.detach().clone()
    train_loop(accelerator, args, state, compute_loss, lambda step: {})
    assert taken == [(0, 1), (1, 2), (2, 3)]  # (step, optimizer steps the model had taken by then)
    assert not torch.equal(critic.weight, before)


def test_finish_writes_the_summary_and_hands_the_weights_to_save(tmp_path):
    args, accelerator, state = start(tmp_path, "--max_steps", "1")
    result = train_loop(accelerator, args, state, squared(state), lambda step: {"test/m": 1.0})
    saved = {}

    def save(state_dict):
        saved.update(state_dict)
        return [tmp_path / "model"]

    summary = finish_training(accelerator, args, state.model, {"what": "test", **result.summary()}, save,
                              push=lambda *a: pytest.fail("pushed without --push_to_hub"), compare=(state.model,))
    assert saved.keys() == {"weight", "bias"}
    assert json.loads((tmp_path / "training_summary.json").read_text()) == summary
    assert summary["what"] == "test" and summary["steps"] == 1 and summary["test/m"] == 1.0
    assert summary["processes_seen"] == 1 and summary["weights_max_abs_diff_across_processes"] == 0.0


def test_with_use_ema_evaluation_and_the_saved_model_see_the_average_and_training_the_raw_weights(tmp_path):
    args, accelerator, state = start(tmp_path, "--max_steps", "3", "--eval_steps", "2", "--use_ema",
                                     "--ema_max_decay", "0.5")
    shadows, seen = [], []

    def evaluate(step):
        seen.append(state.model.weight.detach().clone())
        shadows.append(state.ema.shadow[0].clone())
        return {}

    train_loop(accelerator, args, state, squared(state), evaluate)
    assert state.ema.num_updates == 3 and len(seen) == 2
    assert all(torch.equal(a, b) for a, b in zip(seen, shadows))
    assert not torch.equal(state.model.weight, state.ema.shadow[0])  # the loop went on with its own weights
    saved = {}
    summary = finish_training(accelerator, args, state.model, {},
                              lambda sd: saved.update({k: v.clone() for k, v in sd.items()}) or [],
                              push=lambda *a: None, compare=(state.model,), ema=state.ema)
    assert torch.equal(saved["weight"], state.ema.shadow[0]) and torch.equal(saved["bias"], state.ema.shadow[1])
    assert summary["ema_max_abs_diff_across_processes"] == 0.0
    assert not torch.equal(state.model.weight, state.ema.shadow[0])  # restored after saving


def test_the_loop_logs_every_logging_steps_and_measuring_the_gradient_norm_changes_no_weight(tmp_path):
    """With clipping off, the norm is measured through an infinite bound on logging steps only."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vqgen.tracking import TrainingWindow

    weights = {}
    for report_to in ["tensorboard", "none"]:
        args, accelerator, state = start(tmp_path / report_to, "--max_steps", "4", "--logging_steps", "2",
                                         "--max_grad_norm", "0", "--gradient_accumulation_steps", "2",
                                         "--report_to", report_to)
        window = TrainingWindow(accelerator)

        def compute_loss(batch, step):
            loss = state.model(batch["x"]).pow(2).mean()
            window.add({"loss": loss, **({"late": torch.tensor(float(step))} if step >= 3 else {})}, len(batch["x"]))
            return loss, None

        train_loop(accelerator, args, state, compute_loss, lambda step: {"test/m": float(step)}, window=window)
        weights[report_to] = state.model.weight.detach().clone()
    assert torch.equal(weights["tensorboard"], weights["none"])
    assert not (tmp_path / "none" / "logs").exists()
    events = EventAccumulator(str(tmp_path / "tensorboard" / "logs" / "vqgen"))
    events.Reload()
    for tag in ["train/loss", "train/grad_norm", "train/learning_rate", "train/examples_per_second"]:
        assert [e.step for e in events.Scalars(tag)] == [2, 4], tag
    # a term that appears mid-window is averaged over the micro-batches that reported it (step 3's two)
    assert [(e.step, e.value) for e in events.Scalars("train/late")] == [(4, 3.0)]
    assert [e.step for e in events.Scalars("test/m")] == [4]
