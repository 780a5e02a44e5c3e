"""Property-based tests (hypothesis) of the quantiser, the VQ-VAE tokenizer, the data layer and sampling."""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import stage2_prior
from stage1_tokenizer import VQVAE
from vqgen.data import load_image_dataset
from stage1_tokenizer.quantizers import VectorQuantizer, VectorQuantizerConfig
from stage2_prior.token_choice import filter_logits
from vqgen.sampling_settings import SamplingSettings

# database=None: no .hypothesis/ folder left in the checkout
FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])


# -- 1. quantiser and tokenizer --------------------------------------------------------------------
@FAST
@given(
    b=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(1, 5), d=st.integers(1, 8), k=st.integers(1, 32),
    dtype=DTYPES, l2=st.booleans(), ema=st.sampled_from([None, 0.5, 0.99]),
    seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-3, 1.0, 100.0]),
)
def test_quantizer_shapes_and_ranges(b, h, w, d, k, dtype, l2, ema, seed, scale):
    torch.manual_seed(seed)
    vq = VectorQuantizer(VectorQuantizerConfig(codebook_size=k, ema_decay=ema, l2_normalize=l2, codebook_init="random"),
                         dim=d)
    z = (torch.randn(b, d, h, w, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)

    for training in (True, False):
        vq.train(training)
        out = vq(z)
        assert out.codes.shape == (b, h, w)
        assert out.codes.dtype == torch.long
        assert int(out.codes.min()) >= 0 and int(out.codes.max()) < k
        assert out.quantized.shape == (b, d, h, w)
        assert torch.isfinite(out.quantized).all()
        assert out.counts.shape == (k,) and float(out.counts.sum()) == b * h * w

    vq.eval()
    eval_codes = vq(z).codes
    assert torch.equal(vq.nearest(z), eval_codes)
    looked_up = vq.lookup(eval_codes)
    assert looked_up.shape == (b, d, h, w)


@functools.lru_cache(maxsize=None)
def _vqvae(k: int, s: int, n: int) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(codebook_size=k, code_dim=4, channels=8, num_res_blocks=1, image_size=s, num_downsamples=n).eval()


@FAST
@given(
    b=st.integers(1, 3), k=st.sampled_from([1, 2, 16]),
    geometry=st.sampled_from([(8, 1), (8, 2), (16, 1), (16, 2), (28, 1), (28, 2), (12, 2)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_vqvae_tokenize_detokenize(b, k, geometry, seed):
    s, n = geometry
    model = _vqvae(k, s, n)
    x = torch.rand(b, 1, s, s, generator=torch.Generator().manual_seed(seed))
    codes = model.tokenize(x)
    side = s // 2**n
    assert codes.shape == (b, side, side)
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < k
    images = model.detokenize(codes)
    assert images.shape == (b, 1, s, s)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


# -- 2. data layer ---------------------------------------------------------------------------------
@settings(FAST, max_examples=15)  # each example writes a tree and builds two datasets: the slowest test here
@given(
    class_sizes=st.lists(st.integers(2, 6), min_size=1, max_size=3),
    names=st.lists(st.sampled_from(["a", "b", "cat", "dog", "z9", "Zeta", "0"]), min_size=3, max_size=3, unique=True),
    mode=st.sampled_from(["L", "RGB"]),
    size=st.integers(4, 12),
    image_size=st.one_of(st.none(), st.integers(4, 16)),
    channels=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_imagefolder_splits(class_sizes, names, mode, size, image_size, channels, seed):
    rng = np.random.default_rng(seed)
    names = names[: len(class_sizes)]
    total = sum(class_sizes)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        for name, count in zip(names, class_sizes):
            (root / name).mkdir(parents=True)
            for i in range(count):
                shape = (size, size) if mode == "L" else (size, size, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")

        splits = {split: load_image_dataset(str(root), split, image_size=image_size, channels=channels)
                  for split in ("train", "test")}
        decoded = {split: np.stack([ds[i]["image"].numpy() for i in range(len(ds))]) for split, ds in splits.items()}

    assert len(splits["train"]) + len(splits["test"]) == total
    assert len(splits["train"]) > 0 and len(splits["test"]) > 0
    c = channels if channels is not None else (1 if mode == "L" else 3)
    s = image_size if image_size is not None else size
    per_class = np.zeros(len(names), dtype=int)
    for split, ds in splits.items():
        images = decoded[split]
        assert images.shape == (len(ds), c, s, s) and images.dtype == np.uint8
        if len(names) == 1:  # one class folder: read as unlabelled
            assert ds.class_names is None
            per_class += len(ds)
            continue
        assert ds.class_names == sorted(names)
        labels = ds.labels
        assert labels.min() >= 0 and labels.max() < len(names)
        per_class += np.bincount(labels, minlength=len(names))
    # every image lands in exactly one split: per class, train + test = the files of that class
    expected = [count for _, count in sorted(zip(names, class_sizes))]
    assert per_class.tolist() == expected


# -- 3. sampling arguments -------------------------------------------------------------------------
torch.manual_seed(0)
PRIOR = stage2_prior.build_prior(
    stage2_prior.TokenizerSpec("t", codebook_size=16, grid_shape=(2, 2), image_size=8, image_channels=1),
    ["a", "b"], num_layers=1, hidden_size=16, num_heads=2,
).eval()


def _valid(num_samples, temperature, top_k, top_p) -> bool:
    return (
        num_samples > 0
        and math.isfinite(temperature) and temperature > 0
        and (top_k is None or 1 <= top_k <= 16)
        and (top_p is None or 0 < top_p <= 1)  # False for nan
    )


@FAST
@given(
    temperature=st.one_of(
        st.floats(-2.0, 5.0, allow_nan=False), st.sampled_from([0.0, -0.0, math.nan, math.inf, 1e-30, 1e30])
    ),
    top_k=st.one_of(st.none(), st.integers(-2, 40)),
    top_p=st.one_of(st.none(), st.floats(-0.5, 1.5, allow_nan=False), st.just(math.nan)),
    guidance_scale=st.one_of(st.just(1.0), st.floats(0.0, 5.0)),
    num_samples=st.integers(-2, 4),
)
def test_sample_codes_valid_or_value_error(temperature, top_k, top_p, guidance_scale, num_samples):
    valid = _valid(num_samples, temperature, top_k, top_p)
    event("valid" if valid else "invalid")
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, guidance_scale=guidance_scale)

    # the settings alone (built, then checked against a 16-code conditional prior) agree with the documented rules
    if _valid(1, temperature, top_k, top_p):
        SamplingSettings(**kwargs).check_for(codebook_size=16, conditional=True)
    else:
        with pytest.raises(ValueError):
            SamplingSettings(**kwargs).check_for(codebook_size=16, conditional=True)

    labels = [0] * num_samples if num_samples > 0 else None
    if not valid:
        with pytest.raises(ValueError):
            stage2_prior.sample_codes(PRIOR, num_samples, class_labels=labels, **kwargs)
        return
    codes = stage2_prior.sample_codes(
        PRIOR, num_samples, class_labels=labels, generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert codes.shape == (num_samples, 2, 2)
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 16


@FAST
@given(
    b=st.integers(1, 3), v=st.integers(2, 20), data=st.data(),
    temperature=st.floats(0.1, 10.0), seed=st.integers(0, 2**31 - 1),
)
def test_filter_logits_keeps_argmax(b, v, data, temperature, seed):
    top_k = data.draw(st.one_of(st.none(), st.integers(1, v)), label="top_k")
    top_p = data.draw(st.one_of(st.none(), st.floats(1e-6, 1.0, exclude_min=False)), label="top_p")
    logits = torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 3
    out = filter_logits(logits, temperature, top_k, top_p)
    assert out.shape == (b, v)
    finite = torch.isfinite(out)
    assert finite.any(-1).all()
    rows = torch.arange(b)
    assert finite[rows, logits.argmax(-1)].all()
    # what survives is exactly the temperature-scaled logits
    assert torch.allclose(out[finite], (logits / temperature)[finite])
    if top_k is not None and top_p is None:
        assert (finite.sum(-1) >= top_k).all()  # ties may keep more, never fewer
    if top_k is not None:
        assert (finite.sum(-1) >= 1).all()


@FAST
@given(
    temperature=st.one_of(st.floats(0.05, 5.0), st.sampled_from([1e-30, 1e30])),
    top_k=st.one_of(st.none(), st.integers(1, 16)),
    top_p=st.one_of(st.none(), st.floats(0.0, 1.0, exclude_min=True)),
    guidance_scale=st.one_of(st.just(1.0), st.floats(0.0, 5.0)),
    num_samples=st.integers(1, 4),
    conditional=st.booleans(),
)
def test_sample_codes_valid_args_give_codes(temperature, top_k, top_p, guidance_scale, num_samples, conditional):
    """Only valid settings (the mixed test above rarely draws them all valid at once)."""
    codes = stage2_prior.sample_codes(
        PRIOR, num_samples, class_labels=[1] * num_samples if conditional else None, temperature=temperature,
        top_k=top_k, top_p=top_p, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0),
    )
    assert codes.shape == (num_samples, 2, 2)
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
