"""Helpers for tests that run the training loop: arguments of tiny runs, the script's command line, kill + resume."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from affect_hf.training import TrainingArguments, get_recipe, parse_train_arguments, train
from affect_hf.training.state import find_latest_state


REPO_ROOT = Path(__file__).resolve().parents[1]
# The start of a script run in a fresh interpreter where neither this package nor its model code can be imported:
# what a user without affect-hf has (Hub remote code, stock transformers).
BLOCK_PROJECT_IMPORTS = textwrap.dedent(
    """
    import sys

    class BlockProject:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "affect_hf":
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, BlockProject())
    """
)
TINY_LOOP_DEFAULTS = dict(mixed_precision="no", num_workers=0, report_to="none", seed=0)


def run_arguments(recipe: str, output_dir: Path, **fields):
    """(loop arguments, recipe arguments); each field goes to the dataclass that declares it."""
    recipe_class = get_recipe(recipe).arguments_class
    loop_names = {field.name for field in dataclasses.fields(TrainingArguments)}
    recipe_names = {field.name for field in dataclasses.fields(recipe_class)}
    unknown = set(fields) - loop_names - recipe_names
    assert not unknown, f"no such option: {unknown}"
    values = {**TINY_LOOP_DEFAULTS, **fields}
    loop = TrainingArguments(
        recipe=recipe, output_dir=str(output_dir), **{k: v for k, v in values.items() if k in loop_names}
    )
    return loop, recipe_class(**{k: v for k, v in values.items() if k in recipe_names})


def as_flags(*arguments) -> list[str]:
    """The command line that parses back into the same dataclasses (the same run, launched as a script)."""
    flags = []
    for instance in arguments:
        for name, value in dataclasses.asdict(instance).items():
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                flags += [f"--{name}", *map(str, value)]
            else:
                flags += [f"--{name}", str(value)]
    return flags


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"training exited early:\n{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


def kill_mid_run_and_resume(training_args, recipe_args, state_step: int, tmp_path: Path) -> dict:
    """Run uninterrupted; run again as a script, SIGKILL it once the state of `state_step` is saved, resume with
    `latest`. Asserts the final weights are equal bit for bit; returns the killed run's state at the kill."""
    uninterrupted = dataclasses.replace(training_args, output_dir=str(tmp_path / "uninterrupted"))
    train(uninterrupted, recipe_args)

    crashed_dir = tmp_path / "crashed"
    crashed = dataclasses.replace(training_args, output_dir=str(crashed_dir))
    flags = as_flags(crashed, recipe_args)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(crashed_dir / "checkpoints" / f"step_{state_step:08d}", process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    latest = find_latest_state(crashed_dir)
    killed_state = json.loads((latest / "trainer_state.json").read_text())

    resumed_args, resumed_recipe_args = parse_train_arguments([*flags, "--resume_from_checkpoint", "latest"])
    assert resumed_args == dataclasses.replace(crashed, resume_from_checkpoint="latest")
    assert resumed_recipe_args == recipe_args
    state = train(resumed_args, resumed_recipe_args)

    final_step = state["global_step"]
    final = f"checkpoints/step_{final_step:08d}/model.safetensors"
    expected = load_file(tmp_path / "uninterrupted" / final)
    actual = load_file(crashed_dir / final)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert (crashed_dir / "best_model" / "model.safetensors").is_file()
    return killed_state


def run_two_processes(flags: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    """`scripts/train.py` as real 2-rank data parallel on CPU (gloo), as `torchrun --nproc_per_node 2` runs it."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*command, str(REPO_ROOT / "scripts" / "train.py"), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
