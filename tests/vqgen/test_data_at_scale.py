"""The data layer for real image collections: lazy decoding, transforms, splits, bad files, workers,
sharding over processes, streaming from local Parquet shards, resume at the sampler."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from two_processes import launch_two_cpu_processes
from vqgen.data import DatasetSpecError, DecodeError, load_image_dataset, load_image_stream, spread_indices
from vqgen.data.transforms import DataAugmentation, center_box, random_box, to_pixels, transform

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQGEN_DATA_CACHE", str(tmp_path / "index-cache"))


def write_image(path: Path, array: np.ndarray, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save)
    return path


def colour_folder(root: Path, n_per_class: int = 4, size=(12, 12), classes=("cat", "dog")) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            for i in range(n_per_class):
                write_image(root / split / name / f"{i}.png", rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    return root


# -- transforms on known inputs ----------------------------------------------------------------
def test_crop_geometry():
    assert center_box(10, 6) == (2, 0, 8, 6) and center_box(6, 10) == (0, 2, 6, 8) and center_box(5, 5) == (0, 0, 5, 5)
    rng = np.random.default_rng(0)
    boxes = [random_box(10, 6, rng) for _ in range(200)]
    assert all(b[3] - b[1] == b[2] - b[0] == 6 and 0 <= b[0] <= 4 and b[1] == 0 for b in boxes)
    assert {b[0] for b in boxes} == set(range(5))  # every position of the square along the longer side
    sides = [random_box(100, 100, rng, min_scale=0.25) for _ in range(300)]
    side = np.array([b[2] - b[0] for b in sides])
    assert side.min() >= 50 and side.max() <= 100 and side.std() > 5  # sqrt(U(0.25, 1)) of the side
    assert all(0 <= b[0] and b[2] <= 100 and 0 <= b[1] and b[3] <= 100 for b in sides)


def test_flip_centre_crop_resize_and_channel_conversion():
    ramp = np.tile(np.arange(8, dtype=np.uint8) * 30, (4, 1))  # 4 rows x 8 columns, brighter to the right
    image = Image.fromarray(ramp)
    centre = to_pixels(image, 4, 1, center_box(8, 4))  # h w c
    assert centre.shape == (4, 4, 1) and (centre[..., 0] == ramp[:, 2:6]).all()  # the middle columns, exactly
    flipped = to_pixels(image, 4, 1, center_box(8, 4), flip=True)
    assert (flipped[..., 0] == ramp[:, 2:6][:, ::-1]).all()
    rgb = to_pixels(image, 4, 3, center_box(8, 4))
    assert rgb.shape == (4, 4, 3) and (rgb == centre).all()  # grey -> RGB repeats the channel
    colour = Image.fromarray(np.stack([np.full((4, 4), v, np.uint8) for v in (200, 100, 50)], -1))
    grey = to_pixels(colour, 4, 1, (0, 0, 4, 4))
    assert abs(int(grey[0, 0, 0]) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1  # ITU-R 601 luma
    half = to_pixels(image, 2, 1, center_box(8, 4))
    assert half.shape == (2, 2, 1) and half[0, 0, 0] < half[0, 1, 0]  # resized, left-to-right order kept


def test_batches_are_b_c_h_w_in_channels_last_memory_and_large_jpegs_decode_at_a_reduced_scale(tmp_path):
    root = colour_folder(tmp_path / "data", size=(12, 10))
    ds = load_image_dataset(str(root), "train", image_size=8)
    batch = ds.collate(ds.__getitems__([0, 1, 2]))
    assert batch["image"].shape == (3, 3, 8, 8) and batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch["image"][1], ds[1]["image"]) and batch["label"].tolist() == ds.labels[:3].tolist()
    from vqgen.data.images import decode
    big = write_image(tmp_path / "big.jpg", np.zeros((400, 600, 3), np.uint8))
    assert decode({"path": str(big)}, min_side=90).size == (150, 100)  # 1/4 scale keeps both sides >= 90
    assert decode({"path": str(big)}).size == (600, 400)


def test_augmentation_is_keyed_by_seed_epoch_and_index():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    aug = DataAugmentation(train_crop="random_resized", min_crop_scale=0.3, horizontal_flip=True)
    draw = lambda *key: transform(image, 8, 3, aug, np.random.default_rng(list(key)))  # noqa: E731
    assert (draw(0, 1, 5) == draw(0, 1, 5)).all()
    assert len({draw(0, epoch, 5).tobytes() for epoch in range(6)}) > 1
    assert (transform(image, 8, 3, None, None) == to_pixels(image, 8, 3, center_box(30, 20))).all()


# -- folders: sizes, splits, labels ------------------------------------------------------------
def test_mixed_sizes_and_non_square_images_need_and_get_a_target_size(tmp_path):
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(12, 12), (20, 10), (9, 15)]):
        write_image(tmp_path / "a" / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_image(tmp_path / "b" / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    with pytest.raises(DatasetSpecError, match="--image_size"):
        load_image_dataset(str(tmp_path), "train")
    ds = load_image_dataset(str(tmp_path), "train", image_size=8)
    assert all(ds[i]["image"].shape == (3, 8, 8) for i in range(len(ds)))


def test_validation_folder_serves_test_and_validation(tmp_path):
    root = colour_folder(tmp_path / "data")
    (root / "test").rename(root / "val")
    assert len(load_image_dataset(str(root), "test")) == 8 == len(load_image_dataset(str(root), "validation"))
    assert len(load_image_dataset(str(root), "train")) == 8
    train = load_image_dataset(str(root), "train")
    assert train.class_names == ["cat", "dog"] and train.image_shape == (3, 12, 12)


def test_building_the_dataset_decodes_no_image(tmp_path, monkeypatch):
    root = colour_folder(tmp_path / "data", n_per_class=3)
    loads = []
    original = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: (loads.append(1), original(self))[1])
    ds = load_image_dataset(str(root), "train")
    assert len(ds) == 6 and ds.image_shape == (3, 12, 12) and not loads  # headers only
    ds[3]
    assert loads  # decoding happens per item, in the transform


def test_grids_show_a_mix_of_classes():
    labels = np.repeat(np.arange(10), 100)  # a class-sorted folder
    assert sorted(labels[spread_indices(labels, len(labels), 20)].tolist()) == sorted(list(range(10)) * 2)
    assert spread_indices(None, 100, 5) == [0, 25, 50, 74, 99]


# -- bad data --------------------------------------------------------------------------------
def bad_folder(root: Path, case: str) -> Path:
    colour_folder(root)
    victim = root / "train" / "cat" / "0.png"
    if case == "truncated_jpeg":
        victim.unlink()
        path = write_image(root / "train" / "cat" / "0.jpg", np.zeros((12, 12, 3), np.uint8), quality=90)
        path.write_bytes(path.read_bytes()[:-40])
    elif case == "zero_bytes":
        victim.write_bytes(b"")
    elif case == "not_an_image":
        victim.write_text("<html>a web page saved as png</html>")
    return root


@pytest.mark.parametrize("case,named", [("truncated_jpeg", "0.jpg"), ("zero_bytes", "0.png"),
                                        ("not_an_image", "0.png")])
def test_a_bad_file_is_refused_before_training_or_skipped_and_counted(tmp_path, case, named, caplog):
    root = bad_folder(tmp_path / "data", case)
    with pytest.raises(DatasetSpecError, match=rf"1 of 8 files.*{named}.*--skip_bad_images"):
        load_image_dataset(str(root), "train")
    kept = load_image_dataset(str(root), "train", skip_bad_images=True)
    assert len(kept) == 7 and "skipping 1 unusable file" in caplog.text and named in caplog.text
    assert all(kept[i]["image"].shape == (3, 12, 12) for i in range(7))


@pytest.mark.integration
def test_bad_data_from_the_command_line_is_one_clear_message(tmp_path):
    root = bad_folder(tmp_path / "data", "truncated_jpeg")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "stage1_tokenizer.train", "--dataset", str(root), "--output_dir",
                          str(tmp_path / "run"), "--max_steps", "1"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "0.jpg" in run.stderr and "--skip_bad_images" in run.stderr
    assert "truncated" in run.stderr.lower()


def test_grey_images_in_a_colour_folder_become_rgb(tmp_path, caplog):
    root = colour_folder(tmp_path / "data")
    write_image(root / "train" / "cat" / "grey.png", np.full((12, 12), 77, np.uint8))
    ds = load_image_dataset(str(root), "train")
    grey = next(ds[i]["image"] for i in range(len(ds)) if ds.table[i]["image"]["path"].endswith("grey.png"))
    assert ds.image_shape[0] == 3 and (grey == 77).all() and "converted to RGB" in caplog.text


def test_one_class_folder_is_unlabelled_and_an_empty_split_is_refused(tmp_path, caplog):
    root = colour_folder(tmp_path / "data", classes=("cat",))
    ds = load_image_dataset(str(root), "train")
    assert ds.class_names is None and "one class folder" in caplog.text
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "dog").mkdir(parents=True)
    with pytest.raises(DatasetSpecError, match="holds no images"):
        load_image_dataset(str(tmp_path / "empty"), "train")


def test_damage_inside_a_file_is_named_when_decoded(tmp_path):
    root = colour_folder(tmp_path / "data")
    path = root / "train" / "cat" / "1.png"
    data = bytearray(path.read_bytes())
    data[60:120] = bytes(60)  # the pixel data, header and IEND intact
    path.write_bytes(bytes(data))
    ds = load_image_dataset(str(root), "train")
    index = next(i for i in range(len(ds)) if ds.table[i]["image"]["path"].endswith("cat/1.png"))
    with pytest.raises(DecodeError, match="cat/1.png"):
        ds[index]


# -- processes, workers, resume, streaming -------------------------------------------------------
@pytest.mark.integration
def test_two_processes_see_disjoint_parts_that_cover_the_epoch(tmp_path):
    out = tmp_path / "seen.json"
    run = launch_two_cpu_processes("tests.sharding_probe", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert len(seen) == 2, "two processes must have taken part"
    a, b = (set(v) for v in seen.values())
    assert not a & b and a | b == set(range(64))


TINY = ["--channels", "8", "--num_res_blocks", "1", "--codebook_size", "16", "--code_dim", "4", "--batch_size", "16",
        "--max_train_samples", "96", "--max_eval_samples", "16", "--eval_steps", "1000", "--lr_scheduler", "constant",
        "--warmup_steps", "0", "--seed", "5", "--train_crop", "random_resized", "--horizontal_flip"]


def train(*argv: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "stage1_tokenizer.train", *TINY, *argv], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.integration
def test_resume_with_workers_is_bit_identical_and_workers_change_nothing(tmp_path):
    """8 steps straight with 2 workers; 8 steps with 0 workers; 5 + resume (mid-epoch: 6 steps an epoch) with 2."""
    train("--output_dir", str(tmp_path / "straight"), "--max_steps", "8", "--dataloader_num_workers", "2",
          "--checkpointing_steps", "0")
    train("--output_dir", str(tmp_path / "no_workers"), "--max_steps", "8", "--checkpointing_steps", "0")
    train("--output_dir", str(tmp_path / "resumed"), "--max_steps", "5", "--dataloader_num_workers", "2",
          "--checkpointing_steps", "5")
    train("--output_dir", str(tmp_path / "resumed"), "--max_steps", "8", "--dataloader_num_workers", "2",
          "--resume_from_checkpoint", "latest", "--checkpointing_steps", "0")
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    for other in ("no_workers", "resumed"):
        weights = load_file(tmp_path / other / "model.safetensors")
        assert all(torch.equal(straight[k], weights[k]) for k in straight), other


def parquet_shards(root: Path, n_train_shards: int = 4) -> Path:
    source = load_image_dataset("embedded", "train", max_samples=80)
    rows = {"image": [{"bytes": None, "path": None}] * 0, "label": []}
    import io
    for i in range(len(source)):
        buffer = io.BytesIO()
        Image.fromarray(source[i]["image"].numpy()[0]).save(buffer, "PNG")
        rows["image"].append({"bytes": buffer.getvalue(), "path": None})
        rows["label"].append(int(source.labels[i]))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=source.class_names)})
    table = datasets.Dataset.from_dict(rows, features=features)
    root.mkdir(parents=True)
    for k in range(n_train_shards):
        table.select(range(k * 16, (k + 1) * 16)).to_parquet(str(root / f"train-{k:05d}-of-{n_train_shards:05d}.parquet"))
    table.select(range(64, 80)).to_parquet(str(root / "test-00000-of-00001.parquet"))
    return root


def test_streamed_parquet_shards_split_by_node_are_disjoint(tmp_path):
    root = parquet_shards(tmp_path / "shards")
    parts = [[item["image"].numpy().tobytes() for item in
              load_image_stream(str(root), "train", image_size=28, channels=1, rank=r, world_size=2)] for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 32 and not set(parts[0]) & set(parts[1])
    mapped = load_image_dataset(str(root), "train")  # the same shards, indexed instead of streamed
    assert len(mapped) == 64 and mapped.class_names == [str(i) for i in range(10)]
    with pytest.raises(DatasetSpecError, match="--image_size"):
        load_image_stream(str(root), "train", image_size=None, channels=1)


@pytest.mark.integration
def test_training_streams_local_parquet_shards_under_two_processes(tmp_path):
    root = parquet_shards(tmp_path / "shards")
    run = launch_two_cpu_processes("stage1_tokenizer.train", "--dataset", str(root), "--streaming", "--image_size", "28",
                                   "--channels_in", "1", "--shuffle_buffer", "8", "--output_dir", str(tmp_path / "run"),
                                   "--max_steps", "6", *TINY[:8], "--batch_size", "8", "--eval_steps", "1000")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["processes_seen"] == 2 and summary["weights_max_abs_diff_across_processes"] == 0.0
    assert summary["steps"] == 6 and 0 < summary["test/mse"] < 1
