"""SamplingSettings: checked when built, completed from keywords, made into command-line flags, and one
check of class labels for every entry point."""

import argparse
import dataclasses
import math

import pytest
import torch

from vqgen.sampling_settings import (SETTING_NAMES, SamplingKwargs, SamplingSettings, add_sampling_arguments,
                                     gaussian_latent_settings, sampling_kwargs)
from vqgen.validation import check_class_labels


def test_the_keyword_form_has_exactly_the_fields():
    assert set(SamplingKwargs.__annotations__) == set(SETTING_NAMES) == {f.name for f in dataclasses.fields(SamplingSettings)}


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(temperature=math.nan), dict(temperature=True),
                                 dict(top_k=0), dict(top_k=True), dict(top_k=2.0), dict(top_p=0.0), dict(top_p=1.01),
                                 dict(top_p=math.nan), dict(guidance_scale=math.inf), dict(guidance_scale="2")])
def test_bad_settings_are_refused_when_built(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingSettings(**bad)
    with pytest.raises(ValueError, match=next(iter(bad))):  # and when a keyword replaces a field
        SamplingSettings.resolve(SamplingSettings(), **bad)


def test_resolve_puts_each_given_keyword_in_its_fields_place():
    base = SamplingSettings(temperature=0.8, top_k=5, guidance_scale=2.0)
    assert SamplingSettings.resolve(base, top_k=None, top_p=0.9) == SamplingSettings(0.8, 5, 0.9, 2.0)
    assert SamplingSettings.resolve(None, SamplingSettings(guidance_scale=3.0), temperature=0.5) == \
        SamplingSettings(temperature=0.5, guidance_scale=3.0)  # no sampling: the defaults
    assert SamplingSettings.resolve() == SamplingSettings()
    with pytest.raises(TypeError, match=r"unknown sampling setting\(s\) \['topk'\]"):
        SamplingSettings.resolve(topk=3)
    with pytest.raises(TypeError, match="got dict"):
        SamplingSettings.resolve({"top_k": 3})


def test_checks_that_need_the_model():
    assert SamplingSettings(top_k=16).check_for(codebook_size=16, conditional=False) == SamplingSettings(top_k=16)
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        SamplingSettings(top_k=17).check_for(codebook_size=16, conditional=True)
    with pytest.raises(ValueError, match="needs a class-conditional prior"):
        SamplingSettings(guidance_scale=2.0).check_for(codebook_size=16, conditional=False)
    with pytest.raises(ValueError, match=r"\['top_p'\] apply to a two-stage pipeline's prior; a VAE"):
        SamplingSettings(top_p=0.9).check_for(codebook_size=None, conditional=True, sampler="VAE")
    assert gaussian_latent_settings("VAE", SamplingSettings(temperature=0.5)) == SamplingSettings(temperature=0.5)
    assert gaussian_latent_settings("VAE", top_k=None, temperature=0.5) == SamplingSettings(temperature=0.5)
    with pytest.raises(ValueError, match=r"\['guidance_scale'\] apply"):  # a prior's knob given by name, even neutral
        gaussian_latent_settings("VAE", guidance_scale=1.0)


def test_command_line_flags_come_from_the_fields():
    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)
    assert sampling_kwargs(parser.parse_args([])) == dict.fromkeys(SETTING_NAMES)  # unset: the model's defaults
    args = parser.parse_args(["--top_k", "7", "--guidance_scale", "2.5"])
    assert SamplingSettings.resolve(**sampling_kwargs(args)) == SamplingSettings(top_k=7, guidance_scale=2.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--top_k", "2.5"])
    assert "nucleus" in parser.format_help()


NAMES = ["cat", "dog", "7"]


@pytest.mark.parametrize("labels, expected", [
    (1, [1, 1, 1]), ("dog", [1, 1, 1]), ("7", [2, 2, 2]), ("1", [1, 1, 1]), ([0, "dog", 2.0], [0, 1, 2]),
    (range(3), [0, 1, 2]), (torch.tensor(2), [2, 2, 2]), (torch.tensor([0, 1, 2]), [0, 1, 2]),
    (torch.tensor([2.0]), [2, 2, 2]), ([torch.tensor(1)] * 3, [1, 1, 1]),
])
def test_class_labels_as_users_give_them(labels, expected):
    assert check_class_labels(labels, 3, 3, NAMES).tolist() == expected


@pytest.mark.parametrize("labels, error, match", [
    ([1.5, 2.0, 0], ValueError, "1.5 is not a whole number"),
    (torch.tensor([0.5, 1.0, 2.0]), ValueError, "fractional"),
    (True, TypeError, "a bool"),
    ([0, False, 1], TypeError, "a bool"),
    (torch.tensor([True, False, True]), TypeError, "torch.bool"),
    (torch.zeros(3, 1, dtype=torch.long), ValueError, r"got shape \(3, 1\)"),
    ([0, 1], ValueError, "got 2 class labels for num_samples=3"),
    (3, ValueError, "class label 3 is out of range: this 3-class model takes 0..2"),
    (-1, ValueError, "out of range"),
    ("bird", ValueError, "unknown class name 'bird'"),
    (None, TypeError, "ints or class names"),
])
def test_bad_class_labels_are_refused(labels, error, match):
    with pytest.raises(error, match=match):
        check_class_labels(labels, 3, 3, NAMES)


def test_the_null_class_only_where_asked_and_no_labels_without_classes():
    assert check_class_labels([-1, 0, 2], 3, 3, null_class=True).tolist() == [-1, 0, 2]
    with pytest.raises(ValueError, match=r"0..2 or -1 \(the null class\)"):
        check_class_labels([-2, 0, 2], 3, 3, null_class=True)
    with pytest.raises(ValueError, match="this prior is unconditional: pass class_labels=None"):
        check_class_labels([0], 1, 0, model="prior")
