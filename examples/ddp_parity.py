"""Parity on two GPUs: the torch adapter under ``torch.distributed`` and ``DistributedDataParallel``.

    torchrun --nproc_per_node=2 examples/ddp_parity.py                  # train on 2 GPUs (NCCL)
    torchrun --nproc_per_node=2 examples/ddp_parity.py --check --steps 0  # only the gradient check and timing
    python examples/ddp_parity.py --world-size 2 --device cpu --steps 20  # 2 CPU processes (gloo, vanilla)

The model is ``examples/parity.py``'s, in PyTorch: a one-hot bit, ``flashrnn_core.torch.LSTM`` (its input
projection is the module's ``weight_ih``), a linear readout to one logit per step, trained on the parity of
every prefix. Each rank draws its part of one global batch (the batch is a function of the step and the seed,
not of the rank), so:

* ``--check`` runs one step under DDP and compares the averaged gradients with those of one process running
  the whole global batch on one device (rank 0): they must agree to float32 rounding (the mean over the
  global batch is the mean of the per-rank means, as ranks hold equal shares). It also times a training step
  both ways.
* training prints the loss, the time per step, and rank 0's accuracy on strings longer than the training ones.

Without ``torchrun`` (no ``RANK`` in the environment) the script starts ``--world-size`` processes itself.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

try:
    import flashrnn_core.torch as fct
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    import flashrnn_core.torch as fct


@dataclass(frozen=True)
class Setup:
    rank: int
    world: int
    device: torch.device


class ParityModel(nn.Module):
    """bits ``[B, T]`` (0/1) -> per-step logits ``[B, T]`` of the parity so far."""

    def __init__(self, cell: str, heads: int, head_dim: int, backend: str) -> None:
        super().__init__()
        rnn_class = {"lstm": fct.LSTM, "gru": fct.GRU, "slstm": fct.sLSTM, "elman": fct.Elman}[cell]
        hidden = heads * head_dim
        self.rnn = rnn_class(2, hidden, num_heads=heads, batch_first=True, backend=backend)
        self.readout = nn.Linear(hidden, 1)

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(F.one_hot(bits, 2).to(self.readout.weight.dtype))
        return self.readout(h)[..., 0]


def global_batch(step: int, seed: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of a step (the same on every rank): bits ``[batch, length]``, prefix parities."""
    gen = torch.Generator().manual_seed(seed * 100_003 + step)
    bits = torch.randint(0, 2, (batch, length), generator=gen)
    return bits, (bits.cumsum(1) % 2).float()


def shard(t: torch.Tensor, setup: Setup) -> torch.Tensor:
    """This rank's equal share of a global batch."""
    per = t.shape[0] // setup.world
    return t[setup.rank * per : (setup.rank + 1) * per]


def loss_of(model: nn.Module, bits: torch.Tensor, target: torch.Tensor, device: torch.device) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(model(bits.to(device)), target.to(device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step_fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``step_fn()`` after two warm-up calls."""
    for _ in range(2):
        step_fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        step_fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def check_gradients(args: argparse.Namespace, setup: Setup) -> None:
    """One DDP step against one process on the global batch; prints the largest relative difference."""
    torch.manual_seed(args.seed)
    model = ParityModel(args.cell, args.heads, args.head_dim, args.backend).to(setup.device)
    reference_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ddp = DistributedDataParallel(model, device_ids=[setup.device.index] if setup.device.type == "cuda" else None)
    bits, target = global_batch(0, args.seed, args.batch, args.length)
    loss_of(ddp, shard(bits, setup), shard(target, setup), setup.device).backward()
    ddp_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    def ddp_step():
        ddp.zero_grad(set_to_none=True)
        loss_of(ddp, shard(bits, setup), shard(target, setup), setup.device).backward()

    ddp_seconds = time_step(ddp_step, setup.device, args.repeats)
    if setup.rank != 0:
        return
    single = ParityModel(args.cell, args.heads, args.head_dim, args.backend).to(setup.device)
    single.load_state_dict(reference_state)
    loss_of(single, bits, target, setup.device).backward()
    worst = 0.0
    for name, p in single.named_parameters():
        diff = (ddp_grads[name] - p.grad).norm() / p.grad.norm().clamp_min(1e-30)
        worst = max(worst, float(diff))
        print(f"  {name:28s} |grad| {float(p.grad.norm()):.4e}  relative difference {float(diff):.2e}")

    def single_step():
        single.zero_grad(set_to_none=True)
        loss_of(single, bits, target, setup.device).backward()

    single_seconds = time_step(single_step, setup.device, args.repeats)
    verdict = "equal" if worst <= args.tolerance else "DIFFERENT"
    print(f"gradients after one step, DDP on {setup.world} x {args.batch // setup.world} vs one process on "
          f"{args.batch}: {verdict} (largest relative difference {worst:.2e}, tolerance {args.tolerance:g})")
    print(f"time per training step (fw + bw + all-reduce), global batch {args.batch} x T={args.length}: "
          f"DDP {ddp_seconds * 1e3:.2f} ms, one device {single_seconds * 1e3:.2f} ms")
    if worst > args.tolerance:
        raise SystemExit(1)


def train(args: argparse.Namespace, setup: Setup) -> None:
    torch.manual_seed(args.seed)
    model = ParityModel(args.cell, args.heads, args.head_dim, args.backend).to(setup.device)
    ddp = DistributedDataParallel(model, device_ids=[setup.device.index] if setup.device.type == "cuda" else None)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, args.steps))
    start = time.perf_counter()
    for step in range(args.steps):
        bits, target = global_batch(step, args.seed, args.batch, args.length)
        loss = loss_of(ddp, shard(bits, setup), shard(target, setup), setup.device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
        opt.step()
        sched.step()
        if setup.rank == 0 and (step + 1) % max(1, args.steps // 10) == 0:
            sync(setup.device)
            per_step = (time.perf_counter() - start) / (step + 1)
            print(f"step {step + 1:5d}  loss {loss.item():.4f}  {per_step * 1e3:.1f} ms/step")
    if setup.rank == 0 and args.steps:
        print(f"accuracy on the last bit of strings of length {args.length + 1}..{args.eval_length}: "
              f"{extrapolation_accuracy(model, args, setup.device):.3f}")


@torch.no_grad()
def extrapolation_accuracy(model: ParityModel, args: argparse.Namespace, device: torch.device) -> float:
    bits, target = global_batch(-1, args.seed, 256, args.eval_length)
    hits = (model(bits.to(device)) > 0) == (target.to(device) > 0.5)
    return float(hits[:, args.length :].float().mean())


def worker(rank: int, args: argparse.Namespace, world: int) -> None:
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    setup = Setup(rank, world, device)
    if rank == 0:
        print(f"{world} processes, {'NCCL on ' + torch.cuda.get_device_name(device) if use_cuda else 'gloo, CPU'}, "
              f"{args.cell} {args.heads}x{args.head_dim}, global batch {args.batch}, T={args.length}")
    try:
        if args.check:
            check_gradients(args, setup)
        train(args, setup)
        # Every rank tears gloo down together: a rank that leaves while rank 0 still evaluates alone can die in
        # gloo's teardown (SIGABRT, "terminate called without an active exception", seen once on CI's CPUs).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", default="lstm", choices=("lstm", "slstm", "gru", "elman"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=64, help="global batch, split evenly over the processes")
    p.add_argument("--length", type=int, default=40, help="training string length")
    p.add_argument("--eval-length", type=int, default=256)
    p.add_argument("--heads", type=int, default=1, help="N (parity.py's small head: it extrapolates)")
    p.add_argument("--head-dim", type=int, default=16, help="D")
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--check", action="store_true", help="compare DDP's gradients with one process, time a step")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest relative gradient difference allowed")
    p.add_argument("--repeats", type=int, default=10, help="timed steps in --check")
    p.add_argument("--world-size", type=int, default=2, help="processes to start when not under torchrun")
    args = p.parse_args(argv)
    if args.batch % args.world_size and "WORLD_SIZE" not in os.environ:
        p.error(f"--batch {args.batch} must split evenly over --world-size {args.world_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "RANK" in os.environ:  # under torchrun: it set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
        worker(int(os.environ["RANK"]), args, int(os.environ["WORLD_SIZE"]))
        return 0
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    torch.multiprocessing.spawn(worker, args=(args, args.world_size), nprocs=args.world_size, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
