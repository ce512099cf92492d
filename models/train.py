"""GloRo training: one command on one CPU, one GPU, or many processes under torchrun (DDP)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models import checkpoint, data
from models.checkpoint import TrainConfig
from models.collapse import TrainingCollapsed, collapse_reason
from models.evaluate import evaluate
from models.gloro import BoundMode, GloroNet, RadiusHead
from models.layers import set_power_steps
from models.losses import make_loss
from models.numerics import flushed_denormals
from models.schedules import eps_schedule, lr_schedule
from models.weight_average import WeightAverage


@dataclass(frozen=True)
class Runtime:
    """Where this process runs and who it is among the torchrun workers."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def start_runtime(device: str) -> Runtime:
    """Join the torchrun process group when started by torchrun (gloo on CPU, nccl on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world_size == 1:
        return Runtime(dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world_size)


class TrainStep(nn.Module):
    """Logits and the differentiable margin constants K in one forward, so DDP sees every use."""

    def __init__(self, model: GloroNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x), self.model.lipschitz_matrix(BoundMode.ESTIMATE)


def _say(runtime: Runtime, message: str) -> None:
    if runtime.is_main:
        print(message, file=sys.stderr, flush=True)


def training_layout(device: torch.device) -> torch.memory_format:
    """Channels-last on the CPU: the same arithmetic, faster there (a 4C3F step on 2 cores, 0.140
    against 0.171 s: `python -m bench.train_step CHECKPOINT --denormals flushed`). On CUDA,
    unmeasured so far, the default layout stays."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def train(config: TrainConfig, out: Path, resume: bool = False, device: str = "auto",
          progress: bool = True, threads: int | None = None, stop_after: int | None = None,
          given: frozenset[str] | None = None) -> dict:
    """Train (or resume) into ``out``; returns the last epoch's log record.

    ``stop_after`` ends this invocation after that many epochs, keeping the schedules of the full
    ``config.epochs`` run, so long trainings can be sliced across sessions with ``resume``.
    A resumed run keeps its saved settings. ``given`` names the fields the caller set on purpose
    (the CLI's flags): each must agree with the saved run, but ``epochs`` (which then replaces the
    saved length) and ``data_dir``. Without it (a Python caller), only the network (architecture,
    activation, data set, LLN) is checked and ``config.epochs`` always replaces the saved length.
    """
    with flushed_denormals():  # first: torch's worker threads inherit it when they start
        if threads:
            torch.set_num_threads(threads)
        runtime = start_runtime(device)
        try:
            return _train(config, Path(out), resume, runtime, progress, stop_after, given)
        finally:
            if runtime.world_size > 1:
                dist.destroy_process_group()


def _train(config: TrainConfig, out: Path, resume: bool, runtime: Runtime, progress: bool,
           stop_after: int | None, given: frozenset[str] | None) -> dict:
    last = out / "checkpoint"
    if resume and not (last / "state.json").exists():
        raise checkpoint.CheckpointError(f"--resume: {last} holds no checkpoint to continue from")
    if not resume and (last / "state.json").exists():
        raise checkpoint.CheckpointError(f"{out} already holds a run ({last}); continue it with --resume, "
                                         "or train into another --out")
    if resume:  # before the data are read: the saved run's subsets, not the defaults
        config = _resumed_config(checkpoint.load_config(last), config, given)
    train_set = data.load(config.dataset, config.data_dir, train=True).subset(config.train_subset)
    test_set = data.load(config.dataset, config.data_dir, train=False).subset(config.test_subset)
    config.input_shape = list(train_set.input_shape)
    config.classes = train_set.classes
    config.color_mode = train_set.color_mode
    history: list[dict] = []
    start_epoch = 0
    state: dict = {}
    if resume:
        model, _, state = checkpoint.load_model(last, config, weights="trained" if config.ema_decay else "model")
        history, start_epoch = state["history"], state["epoch"]
        _say(runtime, f"resuming from {last} at epoch {start_epoch}")
    else:
        torch.manual_seed(config.seed)
        model = _starting_model(config, runtime)
    out.mkdir(parents=True, exist_ok=True)  # once the run can start: a refused one leaves no folder
    layout = training_layout(runtime.device)
    model.to(runtime.device, memory_format=layout)
    set_power_steps(model, config.power_steps)
    average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    if average is not None and start_epoch:
        average.restore(checkpoint.load_weights(last), int(state.get("average_updates", 0)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if start_epoch:
        checkpoint.load_optimizer(last, optimizer)

    step_module: nn.Module = TrainStep(model)
    if runtime.world_size > 1:
        step_module = DistributedDataParallel(step_module, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    loss_fn = make_loss(config.loss, config.trades_lambda)
    eps_at = eps_schedule(config.eps_ramp, config.train_eps, config.ramp_fraction)
    lr_at = lr_schedule(config.lr_schedule, config.lr, config.final_lr)
    augmenting = config.dataset in data.AUGMENTED
    n = len(train_set.labels)
    per_rank = n // runtime.world_size
    steps_per_epoch = max(per_rank // config.batch_size, 1)
    total_steps = steps_per_epoch * config.epochs
    record: dict = history[-1] if history else {}
    if start_epoch >= config.epochs:
        _say(runtime, f"already trained {start_epoch} of {config.epochs} epochs")

    end_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end_epoch):
        model.train()
        started = time.perf_counter()
        # Same permutation on every rank (seeded by epoch), each rank takes its own slice.
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator)[runtime.rank * per_rank:(runtime.rank + 1) * per_rank]
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not (progress and runtime.is_main), file=sys.stderr)
        totals = {"loss": 0.0, "correct": 0, "vra": 0, "seen": 0}
        for step in bar:
            global_step = epoch * steps_per_epoch + step
            eps = eps_at(global_step / total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step / total_steps)
            index = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = data.to_float(train_set.images[index.numpy()])
            if augmenting:
                x = data.augment(x, generator)
            x = x.to(runtime.device, memory_format=layout)
            y = torch.as_tensor(train_set.labels[index.numpy()]).to(runtime.device)
            logits, K = step_module(x)
            loss = loss_fn(logits, y, K, eps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update()
            with torch.no_grad():
                label, radius = RadiusHead(K.detach())(logits)
                margin_ok = radius > config.eps
                totals["loss"] += float(loss) * len(y)
                totals["correct"] += int((label == y).sum())
                totals["vra"] += int(((label == y) & margin_ok).sum())
                totals["seen"] += len(y)
            if step % 20 == 0:
                seen = totals["seen"]
                bar.set_postfix(loss=f"{totals['loss'] / seen:.3f}", acc=f"{totals['correct'] / seen:.3f}",
                                vra=f"{totals['vra'] / seen:.3f}", eps=f"{eps:.3f}")
        seconds = time.perf_counter() - started
        reason = None
        if runtime.is_main:
            # With a weight average, the average is what the checkpoint stands for and what is tested.
            product = average.averaged() if average is not None else model
            reason = non_finite_reason(product, totals["loss"] / totals["seen"])
        if runtime.is_main and reason is None:  # a diverged network has no bound to compute
            result = evaluate(product, test_set, BoundMode.SOUND, device=runtime.device)
            k_sound = product.body.lipschitz_bound()
            seen = totals["seen"]
            record = {
                "epoch": epoch + 1, "seconds": round(seconds, 3), "train_images": seen, "train_eps": round(eps, 6),
                "lr": optimizer.param_groups[0]["lr"], "loss": totals["loss"] / seen,
                "train_accuracy": totals["correct"] / seen, "train_vra_estimate": totals["vra"] / seen,
                "test_accuracy": result.clean_accuracy, "test_vra": result.vra(config.eps),
                "body_lipschitz": k_sound,
            }
            reason = collapse_reason(result, record, history[-1] if history else None)
            record["collapsed"] = reason is not None
            history.append(record)
            with (out / "log.jsonl").open("a") as log:
                log.write(json.dumps(record) + "\n")
            if reason is None:  # a collapsed epoch never replaces the last sound checkpoint
                checkpoint.save(last, product, config, epoch + 1, history, optimizer,
                                trained=model if average is not None else None,
                                average_updates=average.updates if average is not None else None)
            print(f"epoch {epoch + 1}/{config.epochs} {seconds:.1f}s loss {record['loss']:.4f} "
                  f"clean {100 * record['test_accuracy']:.2f} vra@{config.eps:g} {100 * record['test_vra']:.2f} "
                  f"k {k_sound:.3g}", file=sys.stderr, flush=True)
        if _decided_by_main(reason is not None, runtime):
            if runtime.is_main:
                raise TrainingCollapsed(_collapse_message(epoch + 1, reason, last))
            return record
    return record


def non_finite_reason(model: nn.Module, loss: float) -> str | None:
    """Why a diverged epoch cannot even be evaluated (the sound bound's SVD refuses NaN), or None."""
    if not checkpoint.non_finite_tensors(model):
        return None
    return f"the weights are no longer finite (the training loss is {loss:.4g})"


def _decided_by_main(flag: bool, runtime: Runtime) -> bool:
    """Rank 0's flag on every rank (only rank 0 evaluates), so all of them stop together."""
    if runtime.world_size == 1:
        return flag
    shared = torch.tensor([int(flag)], device=runtime.device)
    dist.broadcast(shared, src=0)
    return bool(shared.item())


def _collapse_message(epoch: int, reason: str | None, last: Path) -> str:
    if (last / "state.json").exists():
        kept = f"{last} keeps epoch {checkpoint.load_state(last)['epoch']}, the last before it"
    else:
        kept = "nothing was saved"
    return (f"training collapsed in epoch {epoch}: {reason}; {kept}. A lower --lr, a longer "
            "--ramp-fraction or a smaller --train-eps may avoid it (fine-tune with --init-from)")


def _starting_model(config: TrainConfig, runtime: Runtime) -> GloroNet:
    """Fresh weights, or (fine-tuning) the weights of ``config.init_from`` with a fresh optimiser."""
    if not config.init_from:
        return config.build_model()
    model, source, config.init_epochs = checkpoint.load_trained(Path(config.init_from))
    _check_same_network(source, config, "fine-tune from")
    _say(runtime, f"fine-tuning from {config.init_from} ({config.init_epochs} epochs trained)")
    return model


def _check_same_network(saved: TrainConfig, asked: TrainConfig, action: str) -> None:
    for key in ("architecture", "activation", "dataset", "lln"):
        if getattr(saved, key) != getattr(asked, key):
            raise checkpoint.CheckpointError(
                f"cannot {action} it: the checkpoint is {key}={getattr(saved, key)!r}, "
                f"but {key}={getattr(asked, key)!r} was asked for")


# What a resumed run may change: its length, and where the same data set is found now.
RESUME_MAY_CHANGE = frozenset({"epochs", "data_dir"})


def flag_of(field_name: str) -> str:
    """The `gloro-serve train` flag that sets a TrainConfig field."""
    return "--arch" if field_name == "architecture" else "--" + field_name.replace("_", "-")


def _resumed_config(saved: TrainConfig, asked: TrainConfig, given: frozenset[str] | None) -> TrainConfig:
    """The saved run's settings, longer if asked; a given setting that would change it is refused
    (it was silently ignored: a resumed run kept its saved lr whatever --lr said)."""
    if given is None:
        _check_same_network(saved, asked, "resume from")
    for key in sorted((given or frozenset()) - RESUME_MAY_CHANGE):
        if hasattr(saved, key) and getattr(saved, key) != getattr(asked, key):
            flag = flag_of(key)
            raise checkpoint.CheckpointError(
                f"cannot resume with {flag} {getattr(asked, key)!r}: the run was trained with "
                f"{getattr(saved, key)!r}; drop {flag} to continue it as it was, or train a new run into another --out")
    # asked for on purpose (a Python caller always asks): resuming may extend training; the CLI's
    # default of 100 must not replace a run's own --epochs
    if given is None or "epochs" in given:
        saved.epochs = asked.epochs
    if given is not None and "data_dir" in given:
        saved.data_dir = asked.data_dir
    return saved


def plain_epoch_seconds(config: TrainConfig, gloro: bool, steps: int, threads: int | None = None) -> float:
    """Seconds per training step, GloRo vs plain cross-entropy, for the overhead benchmark."""
    with flushed_denormals():  # as train() does
        return _step_seconds(config, gloro, steps, threads)


def _step_seconds(config: TrainConfig, gloro: bool, steps: int, threads: int | None) -> float:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    train_set = data.load(config.dataset, config.data_dir, train=True)
    config.input_shape, config.classes = list(train_set.input_shape), train_set.classes
    layout = training_layout(torch.device("cpu"))
    model = config.build_model().to(memory_format=layout)
    step_module = TrainStep(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = make_loss("gloro" if gloro else "ce")
    rng = np.random.default_rng(0)
    started = None
    for step in range(steps + 3):
        if step == 3:
            started = time.perf_counter()  # three warm-up steps
        index = rng.integers(0, len(train_set.labels), config.batch_size)
        x = data.to_float(train_set.images[index]).contiguous(memory_format=layout)
        y = torch.as_tensor(train_set.labels[index])
        if gloro:
            logits, K = step_module(x)
        else:
            logits, K = model(x), None
        loss = loss_fn(logits, y, K, config.train_eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps
