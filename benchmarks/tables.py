"""Render the README's results tables from the JSON files in benchmarks/results/.

    python benchmarks/tables.py            # prints Markdown

Reads quality_DATASET.json (benchmarks/quality.py), quality_DATASET_pipeline_guidance2.json (the same
pipeline through `python -m pipelines.evaluate --guidance_scale 2.0`), peer_pythae_DATASET.json
(benchmarks/peer_pythae.py) and speed_cpu.json (benchmarks/speed.py); a missing file is skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("mnist", "fashion_mnist")
SPEED_FILE = "speed_cpu.json"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _likelihood(lik: dict | None) -> str:
    if not isinstance(lik, dict):
        return ""
    if "iwae_k" in lik:
        return (f"{lik['iwae_nats']:.1f} ± {lik['iwae_nats_standard_error']:.1f} nats "
                f"(ELBO {lik['negative_elbo_nats']:.1f})")
    return f"≤ {lik['nll_bound_bits_per_pixel_dim']:.3f} bits/dim (prior {lik['prior_bits_per_pixel_dim']:.3f})"


def _row(label: str, ev: dict) -> str:
    rec, smp, ano = ev["reconstruction"], ev.get("samples"), ev.get("anomaly_detection")
    usage = f"{rec['codebook_usage']:.0%} / {rec['perplexity']:.0f}" if "codebook_usage" in rec else ""
    cells = [label, f"{rec['psnr_db']:.2f}", f"{rec['ssim']:.3f}", usage, _likelihood(ev.get("likelihood"))]
    if isinstance(smp, dict):
        cells += [f"{smp['frechet_distance']:.2f}", f"{smp['precision']:.2f} / {smp['recall']:.2f}",
                  f"{smp['class_accuracy']:.1%}" if "class_accuracy" in smp else ""]
    else:
        cells += ["", "", ""]
    if isinstance(ano, dict):
        cells.append(" / ".join(f"{v:.4f}" for v in ano["roc_auc"].values()) +
                     " (" + ", ".join(ano["roc_auc"]) + ")")
    else:
        cells.append("")
    return "| " + " | ".join(cells) + " |"


def quality_table(dataset: str) -> str:
    ours, peer = _load(f"quality_{dataset}.json"), _load(f"peer_pythae_{dataset}.json")
    guided = _load(f"quality_{dataset}_pipeline_guidance2.json")
    if ours is None:
        return f"(no results/quality_{dataset}.json yet)"
    runs = ours["datasets"][dataset]
    floor = runs["vae"]["samples"]["floor"]
    lines = [
        "| model | PSNR dB | SSIM | codes used / perplexity | likelihood | FD | precision / recall | class accuracy | anomaly ROC-AUC |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("vqgen VQ-VAE + prior", runs["pipeline"]),
        *([_row("vqgen VQ-VAE + prior, guidance 2", guided)] if guided else []),
        _row("vqgen VAE", runs["vae"]),
        _row("vqgen CVAE", runs["cvae"]),
    ]
    if peer is not None:
        names = {"vae": "pythae VAE", "vqvae": "pythae VQ-VAE", "vqvae_ema": "pythae VQ-VAE (EMA)"}
        for kind, entry in peer["models"].items():
            if "evaluation" in entry:
                lines.append(_row(f"{names[kind]} ({entry['num_parameters'] / 1e6:.2f} M)", entry["evaluation"]))
    lines.append(f"| training images vs test (the floor) | | | | | {floor['frechet_distance']:.2f} | "
                 f"{floor['precision']:.2f} / {floor['recall']:.2f} | | |")
    return "\n".join(lines)


def _number(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _speed_entries(speed: dict) -> list[tuple[str, dict]]:
    """(label, measurement) pairs: a group's own figures, or one pair per member of the group."""
    labels = {"reference_matmul": "float32 matmul (the reference rate)", "quantizer": "quantiser forward + backward",
              "stage1_training": "stage-1 training step", "encode": "encode (tokenize)",
              "prior_training": "prior training step", "sampling": "prior sampling", "generate": "pipelines.generate"}
    entries = []
    for group, label in labels.items():
        value = speed.get(group)
        if isinstance(value, dict) and "seconds_per_call" in value:
            entries.append((label, value))
        elif isinstance(value, dict):
            entries += [(f"{label}: {name.replace('_', ' ')}", v) for name, v in value.items() if isinstance(v, dict)]
    return entries


def speed_table() -> str:
    speed = _load(SPEED_FILE)
    if speed is None:
        return "(no results/speed_cpu.json yet)"
    lines = ["| measurement | throughput | achieved GFLOP/s (share of matmul rate) | peak memory (RSS increase) |",
             "|---|---|---|---|"]
    for label, entry in _speed_entries(speed):
        if "error" in entry:
            lines.append(f"| {label} | not measured: {entry['error']} | | |")
            continue
        rate = next((f"{_number(entry[k])} {k.removesuffix('_per_second')}/s" for k in entry if k.endswith("_per_second")),
                    f"{entry.get('gflops', 0):,.1f} GFLOP/s")
        share = (f"{entry['achieved_gflops']:.1f} ({entry['fraction_of_matmul_rate']:.0%})"
                 if "achieved_gflops" in entry else "")
        lines.append(f"| {label} | {rate} | {share} | {entry.get('peak_rss_increase_mib', 0):.0f} MiB |")
    ratios = {"ours over vector-quantize-pytorch": speed.get("quantizer", {}).get("ours_speedup"),
              "key/value cache over none": speed.get("sampling", {}).get("cache_speedup")}
    lines.append("")
    lines.append("Speed ratios: " + "; ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if v is not None))
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for dataset in DATASETS:
        print(f"### {dataset}\n\n{quality_table(dataset)}\n")
    print(f"### speed\n\n{speed_table()}")


if __name__ == "__main__":
    main()
