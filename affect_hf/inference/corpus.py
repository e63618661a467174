"""Corpus runs: `accelerate launch -m affect_hf predict` over many files, on many processes, GPUs and machines.

Each process analyses its own files into its own shard of one Parquet folder (`table.TableWriter` with `shard`):
the files are shared out by size, largest first, so that the processes finish together, and no file is read by
two processes. The processes talk once, at the start: the first process takes the output's lock, checks it, cuts
what an earlier, stopped run left unfinished and hands out the plan. After that, progress and the end are read
from the shards' progress records in the folder, never through collectives: processes with unequal work never
wait on each other (a collective per batch deadlocks; a barrier at the end can outwait the process group's
timeout). `--resume` keeps every file that any process of any earlier launch finished and shares out the rest.
"""

import heapq
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from .table import TableWriter, is_csv_output, progress_path, read_record, shard_records


@dataclass
class Launch:
    """This process's place in a launch (`accelerate launch`, `torchrun`): its rank among `processes`, and the
    device it analyses on."""

    rank: int = 0
    processes: int = 1
    device: str = "auto"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls, device: str = "auto") -> "Launch":
        """The launch this process is part of (one process when none). `auto` and `cuda` become this process's own
        GPU (`cuda:<local rank>`); a launch with more processes on a machine than it has GPUs is refused for them."""
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        if processes == 1:
            return cls(0, 1, device)
        on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        # A launcher may give each process one GPU of its own (SLURM --gpus-per-task=1, CUDA_VISIBLE_DEVICES per
        # rank): it is then cuda:0 in every process.
        own_gpu = on_gpu and torch.cuda.device_count() == 1
        if on_gpu and device in ("auto", "cuda") and not own_gpu:
            local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
            if torch.cuda.device_count() < local_processes:
                raise ValueError(
                    f"--device {device}: {local_processes} processes on this machine, but it has "
                    f"{torch.cuda.device_count()} GPU(s); launch at most that many processes, or pass --device cpu"
                )
        from accelerate import PartialState

        # On a CPU launch a bare PartialState() sees one process of one in each process: cpu=True joins them (gloo).
        state = PartialState(cpu=not on_gpu)
        if on_gpu and device in ("auto", "cuda"):
            device = "cuda:0" if own_gpu else f"cuda:{state.local_process_index}"
        return cls(state.process_index, state.num_processes, device)

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order, in every process."""
        if self.processes == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def broadcast(self, value: Any) -> Any:
        """The first process's `value` in every process (an exception it raised is handed on like a value)."""
        if self.processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]


@dataclass
class CorpusPlan:
    """What each process of a launch analyses: the positions of its inputs among all, in order, and its shard."""

    launch: int
    inputs: list[list[int]]
    finished: int = 0  # inputs finished by earlier launches
    resumed: bool = False

    def shard(self, rank: int) -> str:
        return f"{self.launch:03d}-{rank:04d}"


def assign_by_size(positions: list[int], sizes: list[int], processes: int) -> list[list[int]]:
    """The inputs at `positions` shared out among `processes`, largest first, each to the process with the least
    work so far (the longest-processing-time rule; sizes in bytes stand in for work, and an input of unknown size,
    0, weighs 1 byte, so that such inputs are dealt out in turn); each process's inputs stay in the given order."""
    loads = [(0, rank) for rank in range(processes)]
    shares: list[list[int]] = [[] for _ in range(processes)]
    for position in sorted(positions, key=lambda position: (-sizes[position], position)):
        load, rank = heapq.heappop(loads)
        shares[rank].append(position)
        heapq.heappush(loads, (load + max(sizes[position], 1), rank))
    return [sorted(share) for share in shares]


def plan_corpus(
    path: Path, schema: pa.Schema, fingerprint: dict[str, Any], sizes: list[int], processes: int, resume: bool
) -> CorpusPlan:
    """The plan of a launch, made by its first process under the output's lock: earlier shards cut back to their
    finished inputs (`TableWriter(resume=True)`), the inputs none of them finished shared out among `processes`."""
    finished: set[int] = set()
    launches = [-1]
    records = shard_records(path) if resume else {}
    for shard, record in records.items():
        changed = [key for key in sorted({*record["fingerprint"], *fingerprint})
                   if record["fingerprint"].get(key) != fingerprint.get(key)]  # fmt: skip
        if changed:
            raise ValueError(
                f"cannot resume {path}: this run differs from the one that wrote it ({', '.join(changed)} changed); "
                "run it as it was, or replace the output with --overwrite"
            )
        given = record.get("inputs") if shard is not None else list(range(len(sizes)))
        if not record["complete"]:  # its unfinished input's rows are cut away
            writer = TableWriter(path, schema, fingerprint, resume=True, lock=False, shard=shard,
                                 inputs=record.get("inputs"))  # fmt: skip
            writer.stats = record.get("stats", {})
            writer.close(complete=False)
        finished.update(given[: record["inputs_done"]])
        if shard is not None:
            launches.append(int(shard.split("-")[0]))
    remaining = [position for position in range(len(sizes)) if position not in finished]
    return CorpusPlan(max(launches) + 1, assign_by_size(remaining, sizes, processes), len(finished), bool(records))


@dataclass
class CorpusProgress:
    """What the first process reads of the shards of a launch, in the folder: inputs finished so far and, at the
    end, what each shard counted (its record's `stats`)."""

    path: Path
    shards: list[str]

    def records(self) -> dict[str, dict[str, Any]]:
        found = {}
        for shard in self.shards:
            try:
                found[shard] = read_record(progress_path(self.path, shard))
            except (OSError, ValueError):  # not written yet: read again next time
                continue
        return found

    def wait(self, on_progress: Callable[[int], None] | None = None, poll_seconds: float = 0.5) -> list[dict]:
        """Each shard's stats, once every shard's record says it is complete or was interrupted; a shard whose
        process failed (its record says so) ends the wait with an error naming it (a process that is killed ends
        the launch, and this one with it); `on_progress(inputs finished)` as they grow."""
        while True:
            records = self.records()
            if on_progress is not None:
                on_progress(sum(record["inputs_done"] for record in records.values()))
            failed = [shard for shard, record in records.items() if record.get("stats", {}).get("failed")]
            if failed:
                raise RuntimeError(
                    f"the process writing shard {', '.join(failed)} of {self.path} failed (its error is in its own "
                    "output); what every process finished is kept: run again with --resume"
                )
            ended = [record for record in records.values()
                     if record["complete"] or record.get("stats", {}).get("interrupted")]  # fmt: skip
            if len(ended) == len(self.shards):
                return [record.get("stats", {}) for record in ended]
            time.sleep(poll_seconds)


def check_corpus_output(output: str | os.PathLike, processes: int) -> None:
    if processes > 1 and is_csv_output(output):
        raise ValueError(
            f"{output}: a CSV output is one file, which {processes} processes cannot share; name a Parquet folder "
            "(FOLDER.parquet)"
        )


__all__ = ["CorpusPlan", "CorpusProgress", "Launch", "assign_by_size", "check_corpus_output", "plan_corpus"]
