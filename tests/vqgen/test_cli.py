"""Command lines built from the config dataclasses: one default per option, `--config FILE` for a whole run."""

import dataclasses
import json

import pytest
import yaml

from stage1_tokenizer import FSQConfig, VectorQuantizerConfig, VQVAEConfig
from stage1_tokenizer.train import build_model, parse_args
from vqgen.training import TrainingArguments


def test_the_parser_defaults_are_the_dataclass_defaults():
    args = parse_args([])
    for cls in (TrainingArguments, VectorQuantizerConfig):
        for f in dataclasses.fields(cls):
            if f.name == "type":
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if f.name in ("output_dir",):  # a per-script default, passed by the script
                continue
            assert getattr(args, f.name) == default, f.name
    assert args.fsq_levels == FSQConfig().levels and args.code_dim == VQVAEConfig().code_dim


def test_a_config_file_gives_a_run_and_flags_on_the_command_line_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"quantizer": "fsq", "fsq_levels": [5, 5, 3], "max_steps": 7, "channels": 16}))
    args = parse_args(["--config", str(path), "--max_steps", "9"])
    assert (args.quantizer, args.fsq_levels, args.max_steps, args.channels) == ("fsq", [5, 5, 3], 9, 16)
    model = build_model(args, 28, 1, None)
    assert model.config.quantizer == FSQConfig(levels=[5, 5, 3]) and model.codebook_size == 75
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"model": "vae", "latent_dim": 3}))
    assert build_model(parse_args(["--config", str(as_json)]), 28, 1, None).config.latent_dim == 3


def test_a_config_file_with_an_unknown_option_is_refused(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("max_stpes: 3\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)])
    assert "max_stpes" in capsys.readouterr().err


def test_old_flags_keep_their_meaning():
    args = parse_args(["--ema_decay", "0", "--l2_normalize", "--codebook_size", "64"])
    config = build_model(args, 28, 1, None).config.quantizer
    assert config.ema_decay is None and config.l2_normalize and config.codebook_size == 64
