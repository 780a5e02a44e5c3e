"""Run under 2 processes by tests/test_data_at_scale.py: which training examples each process sees in one epoch."""

import argparse
import dataclasses
import json
import sys

import torch

from vqgen.distributed import leave_after_distributed_run
from vqgen.training import TrainingArguments, make_accelerator, prepare_training


class Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor(i)}


def main(out: str) -> None:
    # every shared option at its default, so the probe follows new ones
    args = argparse.Namespace(**{**dataclasses.asdict(TrainingArguments()), "batch_size": 8, "lr_scheduler": "constant",
                                 "warmup_steps": 0, "max_steps": 4, "dataloader_num_workers": 1, "report_to": "none",
                                 "output_dir": str(out) + ".run"})
    accelerator = make_accelerator(args)
    state = prepare_training(accelerator, torch.nn.Linear(1, 1), Numbers(), None, args)
    batches = state.batches(1)
    seen = [int(i) for _ in range(len(state.train_loader)) for i in next(batches)["index"]]
    everyone = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(everyone, seen)
    if accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump({str(rank): indices for rank, indices in enumerate(everyone)}, f)


if __name__ == "__main__":
    main(sys.argv[1])
    leave_after_distributed_run()
