"""Several processes training one net, as Caffe's multi-GPU training does: each process runs its
own solver on its own batches (batch_size is per process), the parameter gradients are summed
across processes and divided by their number before every update, and only the first process
(rank 0) tests, displays and snapshots.

Processes meet through torch.distributed, set up from the environment that ``torchrun`` (or
``launch`` below) gives them: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. NCCL joins
CUDA processes, gloo CPU ones (which is how the multi-process path is tested without a GPU).
Data layers read ``rank()`` and ``world_size()`` to give each process its own share of the data.
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys

import torch

# A test on rank 0 can take a while, and the other ranks wait for it in the next collective.
TIMEOUT = dt.timedelta(hours=2)


def launched() -> bool:
    """Started as one of several processes (by torchrun or ``launch``)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> None:
    """Join the process group named by the environment (no-op for a single process)."""
    import torch.distributed as dist
    if not launched() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)


def active() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    if active():
        import torch.distributed as dist
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    if active():
        import torch.distributed as dist
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def broadcast_params(blobs) -> None:
    """Give every process rank 0's parameter values (Caffe starts all solvers from the root's)."""
    if not active():
        return
    import torch.distributed as dist
    with torch.no_grad():
        for blob in blobs:
            dist.broadcast(blob.tensor.data, src=0)


def average_diffs(blobs) -> None:
    """Sum the parameter diffs over all processes, then divide by their number."""
    if not active():
        return
    import torch.distributed as dist
    diffs = [b.diff_tensor for b in blobs]
    if not diffs:
        return
    flat = torch.cat([d.reshape(-1) for d in diffs])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.mul_(1.0 / dist.get_world_size())
    offset = 0
    for d in diffs:
        n = d.numel()
        d.copy_(flat[offset:offset + n].view_as(d))
        offset += n


def agree_max(values: list[int], device: torch.device) -> list[int]:
    """Element-wise maximum over processes of small integer flags (stop/snapshot requests)."""
    if not active():
        return list(values)
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def barrier() -> None:
    if active():
        import torch.distributed as dist
        dist.barrier()


def finish() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nprocs: int, argv: list[str], env: dict | None = None) -> int:
    """Run ``python ARGV`` as ``nprocs`` processes of one group (what torchrun does, minus its
    agent): signals this process gets (SIGINT, SIGHUP, SIGTERM) are passed to every worker, so
    Caffe's -sigint_effect/-sighup_effect work across them. Returns the first non-zero exit code."""
    base = dict(os.environ, **(env or {}))
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                WORLD_SIZE=str(nprocs), LOCAL_WORLD_SIZE=str(nprocs))
    procs = []
    for r in range(nprocs):
        penv = dict(base, RANK=str(r), LOCAL_RANK=str(r))
        # own session: a Ctrl-C at the terminal reaches the workers once, through forward()
        procs.append(subprocess.Popen([sys.executable, *argv], env=penv,
                                      start_new_session=True))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    sigs = [s for s in (signal.SIGINT, getattr(signal, "SIGHUP", None), signal.SIGTERM) if s]
    old = {s: signal.signal(s, forward) for s in sigs}
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):   # one failed: the rest would
                for p in procs:                                  # wait for it forever
                    if p.poll() is None:
                        p.terminate()
            try:
                procs[0].wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        codes = [p.returncode for p in procs]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return next((c for c in codes if c), 0)
