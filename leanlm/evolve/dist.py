"""Data-parallel training: ``accelerate launch --cpu --num_processes N -m leanlm evolve ...`` (or torchrun).

One loop per process. Every process runs the same seeded loop, so each samples, labels and gates the same
data; the training steps are what is split: each process takes its row-strided parts of each global
batch, and the gradients are summed across processes (all-reduce) after each is normalised by the
*global* batch's labelled-token count (``train.loss_and_grad``). Every process applies the same update,
so the models stay identical and ``--batch-size`` keeps meaning the global batch; one process with
``--micro-batches N`` makes bit for bit the updates of N processes (the same parts, summed in the same
order), and without it the same updates up to the order of float sums. Only the main process writes the run directory; the others run in a private scratch copy
of it, removed at the end. Sampling is not split (each process samples the whole generation); on a real
cluster the sampler is the engine (``--sampler openai|vllm``), not the trainers.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


_WORLD: World | None = None


def world() -> World:
    """This process's place among the launcher's processes (``WORLD_SIZE`` > 1 starts a gloo group)."""
    global _WORLD
    if _WORLD is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            state = PartialState(cpu=True)
            _WORLD = World(state.process_index, state.num_processes)
            atexit.register(_leave)
        else:
            _WORLD = World()
    return _WORLD


def _leave() -> None:
    """At exit: meet the other processes, then tear the group down. A process that exits while another
    still holds its gloo connections can make that one abort ("terminate called without an active
    exception"); so can a group left for the interpreter's shutdown to destroy."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=120))      # names a process that never arrives
    except RuntimeError as e:
        log.warning("leaving without the other processes: %s", e)
    dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the processes in place (a no-op in one process)."""
    if world().size > 1:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if world().size > 1:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def run_dir(out: Path) -> Iterator[Path]:
    """The directory this process writes: ``out`` on the main process, a private copy of it elsewhere
    (copied before any process goes on, so a resume starts every process from the same state)."""
    w = world()
    if w.main:
        barrier()
        yield out
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"leanlm-rank{w.rank}-"))
    private = scratch / out.name
    try:
        if out.exists():
            shutil.copytree(out, private)
        barrier()
        logging.getLogger("leanlm").setLevel(logging.WARNING)       # one process reports
        yield private
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
