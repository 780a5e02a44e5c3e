"""Saved run arguments: what a run writes into run_args.json, and how a resume with only --output_dir restores it."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from stage1_tokenizer.arguments import parse_args as stage1_args
from stage2_prior.train import parse_args as stage2_args
from vqgen.training import (CHANGEABLE_ON_RESUME, RUN_ARGS_NAME, parse_training_args, save_run_args, saved_plugins,
                            training_parser)

MAIN = SimpleNamespace(is_main_process=True)
ROOT = Path(__file__).resolve().parents[2]


def parse(*argv):
    return parse_training_args(training_parser("test", "a test", list(argv)), list(argv))


def saved_run(tmp_path, *argv):
    args = parse("--output_dir", str(tmp_path), *argv)
    save_run_args(MAIN, args)
    return args


def resume(tmp_path, *argv):
    return parse("--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest", *argv)


def test_a_run_saves_every_resolved_option_as_json_but_the_token_and_the_folder(tmp_path):
    args = saved_run(tmp_path, "--learning_rate", "2e-4", "--hub_token", "hf_secret", "--seed", "7")
    saved = json.loads((tmp_path / RUN_ARGS_NAME).read_text())
    assert saved["learning_rate"] == 2e-4 and saved["seed"] == 7 and saved["max_grad_norm"] == args.max_grad_norm
    assert saved.keys() == vars(args).keys() - {"hub_token", "output_dir", "config", "resume_from_checkpoint"}
    assert "hf_secret" not in (tmp_path / RUN_ARGS_NAME).read_text()
    assert not list(tmp_path.glob(f".{RUN_ARGS_NAME}*"))  # written atomically: no scratch file left


def test_resuming_with_only_the_output_dir_restores_the_saved_options(tmp_path):
    first = saved_run(tmp_path, "--learning_rate", "2e-4", "--seed", "7", "--batch_size", "3", "--max_steps", "10",
                      "--lr_scheduler", "constant", "--mixed_precision", "bf16")
    again = resume(tmp_path)
    assert vars(again) == {**vars(first), "resume_from_checkpoint": "latest"}


def test_a_conflicting_flag_is_refused_naming_both_values_and_the_file(tmp_path, capsys):
    saved_run(tmp_path, "--learning_rate", "0.001", "--seed", "7")
    with pytest.raises(SystemExit):
        resume(tmp_path, "--learning_rate", "0.002", "--seed", "8")
    err = capsys.readouterr().err
    path = re.escape(str(tmp_path / RUN_ARGS_NAME))
    assert re.search(rf"--learning_rate 0.002 conflicts with the saved run's 0.001; --seed 8 conflicts with the saved "
                     rf"run's 7 \({path}\)", err), err
    assert "--max_steps" in err  # the message says what may change


def test_a_flag_equal_to_the_saved_value_is_accepted_however_it_is_spelled(tmp_path):
    saved_run(tmp_path, "--learning_rate", "0.001", "--weight_decay", "0.05")
    assert resume(tmp_path, "--learning_rate", "1e-3", "--weight_decay", "5e-2").learning_rate == 0.001


def test_the_settings_that_may_change_on_resume_do(tmp_path):
    saved_run(tmp_path, "--max_steps", "10", "--eval_steps", "5", "--checkpointing_steps", "5", "--learning_rate", "0.01")
    args = resume(tmp_path, "--max_steps", "20", "--max_train_minutes", "3", "--eval_steps", "4", "--eval_batch_size",
                  "8", "--max_eval_samples", "16", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1",
                  "--logging_steps", "3", "--report_to", "none", "--dataloader_num_workers", "1",
                  "--push_to_hub", "--hub_model_id", "user/x", "--hub_token", "t")
    assert (args.max_steps, args.max_train_minutes, args.eval_steps, args.eval_batch_size, args.max_eval_samples,
            args.checkpointing_steps, args.checkpoints_total_limit, args.logging_steps, args.report_to,
            args.dataloader_num_workers, args.push_to_hub, args.hub_model_id) == \
        (20, 3.0, 4, 8, 16, 2, 1, 3, "none", 1, True, "user/x")
    assert args.learning_rate == 0.01


def test_a_config_file_counts_as_given(tmp_path, capsys):
    saved_run(tmp_path, "--learning_rate", "0.001")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"learning_rate": 0.003, "max_steps": 99}))
    with pytest.raises(SystemExit):
        resume(tmp_path, "--config", str(config))
    assert "--learning_rate 0.003 conflicts with the saved run's 0.001" in capsys.readouterr().err
    config.write_text(yaml.safe_dump({"max_steps": 99}))
    assert resume(tmp_path, "--config", str(config)).max_steps == 99


def test_a_new_run_in_the_same_folder_does_not_restore_and_overwrites(tmp_path):
    saved_run(tmp_path, "--learning_rate", "0.01")
    assert parse("--output_dir", str(tmp_path)).learning_rate == 1e-3
    saved_run(tmp_path)
    assert json.loads((tmp_path / RUN_ARGS_NAME).read_text())["learning_rate"] == 1e-3


def test_a_run_without_run_args_resumes_with_the_options_given(tmp_path):
    assert resume(tmp_path, "--learning_rate", "0.02").learning_rate == 0.02


def test_another_scripts_saved_options_are_refused(tmp_path, capsys):
    (tmp_path / RUN_ARGS_NAME).write_text(json.dumps({"tokenizer": "runs/vqvae", "learning_rate": 5e-4}))
    with pytest.raises(SystemExit):
        resume(tmp_path)
    assert "['tokenizer']" in capsys.readouterr().err


def test_a_damaged_run_args_file_is_a_one_line_error(tmp_path):
    (tmp_path / RUN_ARGS_NAME).write_text("{not json")
    with pytest.raises(SystemExit, match="run_args.json: cannot read the saved run's options"):
        resume(tmp_path)


def test_the_saved_runs_plugins_are_found_before_the_parser_is_built(tmp_path):
    (tmp_path / RUN_ARGS_NAME).write_text(json.dumps({"plugins": ["toy_critic_plugin"]}))
    assert saved_plugins(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"], "x") == ["toy_critic_plugin"]
    assert saved_plugins(["--output_dir", str(tmp_path)], "x") == []  # not resuming


def test_stage1_preset_run_resumes_from_only_its_folder_with_the_same_options(tmp_path, capsys):
    first = stage1_args(["--preset", "cifar10-fsq", "--output_dir", str(tmp_path), "--learning_rate", "1e-4",
                         "--dataset", "some/folder"])
    save_run_args(MAIN, first)
    again = stage1_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"])
    assert vars(again) == {**vars(first), "resume_from_checkpoint": "latest"}
    assert (again.quantizer, again.fsq_levels, again.channel_multipliers) == ("fsq", [8, 5, 5, 5], [1, 2, 4])
    with pytest.raises(SystemExit):  # an architecture option cannot change under a resumed model
        stage1_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest", "--channels", "16"])
    assert "--channels 16 conflicts with the saved run's 32" in capsys.readouterr().err


def test_stage2_run_resumes_from_only_its_folder(tmp_path):
    first = stage2_args(["--tokenizer", "runs/vqvae", "--output_dir", str(tmp_path), "--num_layers", "2",
                         "--sample_steps", "10"])
    save_run_args(MAIN, first)
    again = stage2_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest", "--sample_steps", "5"])
    assert vars(again) == {**vars(first), "resume_from_checkpoint": "latest", "sample_steps": 5}


def test_every_changeable_setting_is_an_option_and_is_listed_in_the_docs():
    dests = set(vars(stage1_args([]))) | set(vars(stage2_args(["--tokenizer", "t"])))
    assert set(CHANGEABLE_ON_RESUME) <= dests
    docs = (ROOT / "docs" / "training.md").read_text()
    section = docs[docs.index("## Resuming a run"):]
    section = section[:section.index("\n## ", 1)]
    assert set(re.findall(r"`--(\w+)`", section.split("may change")[1].split("\n\n")[0])) == set(CHANGEABLE_ON_RESUME)
