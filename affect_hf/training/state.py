"""The run's record on disk: the output folder, training states (saved atomically, validated, resumed), history.

```
output_dir/
  training_history.json      history (one entry per evaluation), best scores, bad-image count, status
  best_model/                the Hub-ready folder (best by the recipe's score, or the last)
  checkpoints/step_00001234/ Accelerate state + trainer_state.json (+ stream positions, one file per process)
  figures/                   PNGs written by evaluations (MAE reconstructions)
  <recipe>/                  tracker logs (TensorBoard)
```
"""

import json
import logging
import shutil
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from safetensors import safe_open

from ..files import publish_folder, remove_stale_staging, restore_directory, write_text_atomically


logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
BEST_MODEL_DIR = "best_model"
FIGURES_DIR = "figures"
HISTORY_FILE = "training_history.json"
TRAINER_STATE_FILE = "trainer_state.json"
# Every file of a state with its size, written last (before the trainer state): a state missing one is corrupt.
STATE_FILES_FILE = "state_files.json"
# What accelerate writes into every state, for states saved before the list was kept ({rank}: each process's).
ACCELERATE_STATE_FILES = (("model.safetensors", "pytorch_model.bin"), ("optimizer.bin",), ("scheduler.bin",))
RANDOM_STATES_FILE = "random_states_{rank}.pkl"
STREAM_STATE_FILE = "stream_state_{rank}.json"
STATE_PREFIX = "step_"
# What a run writes in its output folder; `--overwrite_output_dir` deletes exactly these (and the tracker folder).
RUN_ARTIFACTS = (CHECKPOINTS_DIR, BEST_MODEL_DIR, FIGURES_DIR, HISTORY_FILE)
# What must not change when a run is resumed: otherwise the schedule, the data, their order or the model would not
# be those of the interrupted run. (`num_workers` counts only for streamed data, whose position is per worker.)
RESUME_FINGERPRINT_KEYS = (
    "recipe",
    "effective_batch_size",
    "num_processes",
    "learning_rate",
    "total_steps",
    "steps_per_epoch",
    "seed",
    "num_workers",
    "data",
)


class CorruptStateError(OSError):
    """A saved training state that cannot be read back (a damaged or missing file)."""


@dataclass
class TrainerState:
    """Where a run stands: its counters, its best evaluation and its history (as transformers' `TrainerState`).

    Saved with every training state (`trainer_state.json`) and as the run's record (`training_history.json`);
    `train()` returns `to_dict()`. `run` is the fingerprint a resume must match (see `RESUME_FINGERPRINT_KEYS`).
    """

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    best_scores: dict[str, float] | None = None
    saved_model_step: int | None = None
    train_images: int = 0
    unreadable_images: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"
    run: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainerState":
        """A saved state; keys this version does not know are left out."""
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool, run_files: tuple[str, ...] = ()) -> None:
    """Check the output folder before anything trains: a writable folder, not holding another run unless asked.

    A folder holds a run when it has a history, states, a saved model, figures or tracker logs (`run_files` names
    the recipe's own files and its tracker folder); other files are left alone. A best model left hidden by a crash
    between the two renames of an atomic replace is put back first.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output_dir {output_dir} is a file, not a folder")
    restore_directory(output_dir / BEST_MODEL_DIR)
    held = [name for name in RUN_ARTIFACTS + run_files if (output_dir / name).exists()]
    if not resume and held:
        if not overwrite and any((output_dir / name).exists() for name in RUN_ARTIFACTS):
            resume_advice = "--resume_from_checkpoint latest to continue it, " if state_dirs(output_dir) else ""
            raise FileExistsError(
                f"output_dir {output_dir} holds another run ({', '.join(held)}): pass {resume_advice}"
                "--overwrite_output_dir to replace it, or choose another --output_dir"
            )
        # Replacing a run, or clearing what a run that never trained left (e.g. a listing of another data folder).
        for name in held:
            path = output_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"output_dir {output_dir} is not writable: {error}") from error


def state_dirs(output_dir: Path) -> list[Path]:
    """Saved training states, newest first."""
    states_dir = output_dir / CHECKPOINTS_DIR
    if not states_dir.is_dir():
        return []
    states = [
        path
        for path in states_dir.iterdir()
        if path.is_dir() and path.name.startswith(STATE_PREFIX) and path.name[len(STATE_PREFIX) :].isdigit()
    ]
    return sorted(states, key=lambda path: int(path.name[len(STATE_PREFIX) :]), reverse=True)


def find_latest_state(output_dir: Path) -> Path | None:
    states = state_dirs(output_dir)
    return states[0] if states else None


def validate_state_dir(path: Path) -> dict[str, Any]:
    """Read `trainer_state.json` and check every saved file without unpickling anything; return the trainer state.

    torch-saved files are zip archives whose members carry CRCs; safetensors files have a header that must match
    their length. A failure raises `CorruptStateError` naming the file.
    """
    state_file = path / TRAINER_STATE_FILE
    try:
        trainer_state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CorruptStateError(f"{state_file}: {error}") from error
    _check_files_present(path, trainer_state)
    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), "pt") as handle:
                    for key in handle.keys():
                        handle.get_slice(key)
            elif file.suffix in (".bin", ".pt", ".pth", ".pkl"):
                with zipfile.ZipFile(file) as archive:
                    broken = archive.testzip()
                if broken is not None:
                    raise CorruptStateError(f"member {broken} fails its CRC check")
            elif file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
        except Exception as error:  # noqa: BLE001 (any failure to read is a corrupt file)
            raise CorruptStateError(f"{file}: {error}") from error
    return trainer_state


def _check_files_present(path: Path, trainer_state: dict[str, Any]) -> None:
    """A state missing a file (deleted, or never written by a crash) is as corrupt as one with a broken file."""
    listing = path / STATE_FILES_FILE
    if listing.is_file():
        try:
            files = json.loads(listing.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CorruptStateError(f"{listing}: {error}") from error
        for name, size in files.items():
            file = path / name
            if not file.is_file():
                raise CorruptStateError(f"{file} is missing")
            if file.stat().st_size != size:
                raise CorruptStateError(f"{file} has {file.stat().st_size} bytes, {size} when it was saved")
        return
    processes = trainer_state.get("run", {}).get("num_processes") or 1
    required = [*ACCELERATE_STATE_FILES, *((RANDOM_STATES_FILE.format(rank=rank),) for rank in range(processes))]
    for names in required:
        if not any((path / name).is_file() for name in names):
            raise CorruptStateError(f"{path / names[0]} is missing")


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [
        f"{key} {saved.get(key)!r} -> {current.get(key)!r}"
        for key in RESUME_FINGERPRINT_KEYS
        if saved.get(key) != current.get(key)
    ]


def select_resume_state(output_dir: Path, request: str, fingerprint: dict[str, Any]) -> tuple[Path, TrainerState]:
    """The state to resume from and its trainer state.

    `latest` tries the newest state, then older ones, with a warning naming each corrupt state; an explicit path
    that is corrupt is an error that offers the intact states. A state of a run with another recipe, effective
    batch, learning rate or length is refused, naming the differences.
    """
    candidates = state_dirs(output_dir) if request == "latest" else [Path(request)]
    if not candidates or not (candidates[0] / TRAINER_STATE_FILE).is_file() and request != "latest":
        raise FileNotFoundError(f"no training state to resume from: {request} in {output_dir}")
    problems = []
    for path in candidates:
        try:
            trainer_state = validate_state_dir(path)
        except CorruptStateError as error:
            problems.append(str(error))
            if request != "latest":
                intact = [str(other) for other in state_dirs(output_dir) if other != path and _is_intact(other)]
                offer = f"; intact earlier states: {', '.join(intact)}" if intact else ""
                raise CorruptStateError(f"cannot resume from {path}: {error}{offer}") from error
            logger.warning("training state %s is corrupt (%s); trying an earlier one", path, error)
            continue
        differences = fingerprint_differences(trainer_state.get("run", {}), fingerprint)
        if differences:
            raise ValueError(
                f"cannot resume from {path}: this run differs from the saved one ({'; '.join(differences)}); resume "
                "with the same options, or start a new run in another --output_dir"
            )
        if problems:
            logger.warning("resuming from the earlier intact state %s", path)
        return path, TrainerState.from_dict(trainer_state)
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise FileNotFoundError(f"no intact training state to resume from in {output_dir / CHECKPOINTS_DIR}{detail}")


def _is_intact(path: Path) -> bool:
    try:
        validate_state_dir(path)
    except CorruptStateError:
        return False
    return True


def save_training_state(
    accelerator: Accelerator,
    output_dir: Path,
    trainer_state: TrainerState,
    total_limit: int,
    stream_state: dict | None = None,
) -> Path:
    """Accelerate state + our counters (+ each process's stream position), staged then renamed into place.

    A crash never leaves half a state under a final name; the oldest states beyond `total_limit` are removed only
    after the new one is in place.
    """
    states_dir = output_dir / CHECKPOINTS_DIR
    final = states_dir / f"{STATE_PREFIX}{trainer_state.global_step:08d}"
    # Every process writes its part into the same staging folder, so its name is fixed, not random.
    staging = states_dir / f".{final.name}.tmp"
    if accelerator.is_main_process:
        states_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(states_dir, f"{STATE_PREFIX}*")
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if stream_state is not None:
        write_text_atomically(
            staging / STREAM_STATE_FILE.format(rank=accelerator.process_index), json.dumps(stream_state)
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {file.relative_to(staging).as_posix(): file.stat().st_size for file in sorted(staging.rglob("*"))
                 if file.is_file()}  # fmt: skip
        write_text_atomically(staging / STATE_FILES_FILE, json.dumps(files, indent=1))
        write_text_atomically(staging / TRAINER_STATE_FILE, json.dumps(trainer_state.to_dict(), indent=2))
        publish_folder(staging, final)
        for old in state_dirs(output_dir)[total_limit:]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_stream_state(path: Path, rank: int) -> dict | None:
    file = path / STREAM_STATE_FILE.format(rank=rank)
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def write_history(output_dir: Path, trainer_state: TrainerState) -> None:
    write_text_atomically(output_dir / HISTORY_FILE, json.dumps(trainer_state.to_dict(), indent=2))
