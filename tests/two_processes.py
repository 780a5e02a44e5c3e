"""Two real CPU processes under `accelerate launch` (gloo), as the distributed tests run them.

`--multi_gpu` with ACCELERATE_USE_CPU=1 is what starts two cooperating CPU processes; `--cpu
--num_processes 2` would start one, and `--multi_gpu` alone two that never talk.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_cpu_processes(*module_and_args: str, config_file: Path | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch ... -m MODULE ARGS` with 2 CPU processes; returns the finished process."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    config = ["--config_file", str(config_file)] if config_file else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *config, "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", *module_and_args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
