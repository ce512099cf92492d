"""Checkpoints: safetensors for tensors, JSON for everything else. Never pickle.

A checkpoint is a folder:

    model.safetensors       the GloroNet state dict (weights and power-iteration iterates): the
                            network the checkpoint stands for, evaluated, certified and exported
    optimizer.safetensors   the optimiser's per-parameter tensors (absent in exported copies)
    trained.safetensors     only when training keeps a weight average (``ema_decay``): the raw
                            optimised weights, for resuming; model.safetensors is then the average
    state.json              {"format": 1, "config": {...}, "epoch": n, "history": [...],
                             "average_updates": n (with a weight average)}

Folders are written to a temporary sibling and renamed into place, so a crash never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models import architectures
from models.gloro import SAFETY_FACTOR, GloroNet

FORMAT = 1
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model it is loaded into."""


@dataclass
class TrainConfig:
    architecture: str = "2c2f"
    activation: str = "minmax"
    dataset: str = "mnist"
    data_dir: str = "../shared/datasets/mnist"
    eps: float = 0.3  # the eps the model is evaluated and served at
    train_eps: float = 0.45  # the (larger) eps it is trained at
    eps_ramp: str = "log"
    ramp_fraction: float = 0.5
    loss: str = "gloro"
    trades_lambda: float = 1.0
    lln: bool = False
    lr: float = 1e-3
    power_steps: int = 1  # power-iteration steps per training step for the estimated K
    ema_decay: float | None = None  # keep an exponential moving average of the weights; it is the product
    final_lr: float = 1e-6
    lr_schedule: str = "decay-after-half"
    batch_size: int = 256
    epochs: int = 100
    seed: int = 0
    init_from: str | None = None  # fine-tuning: the checkpoint whose weights training started from
    init_epochs: int = 0  # epochs those starting weights had already been trained for
    train_subset: int | None = None
    test_subset: int | None = None
    input_shape: list[int] = field(default_factory=list)  # filled from the data set
    classes: list[str] = field(default_factory=list)
    color_mode: str = "L"
    mean: list[float] | None = None
    std: list[float] | None = None

    def build_model(self) -> GloroNet:
        return architectures.build(self.architecture, tuple(self.input_shape), len(self.classes),
                                   activation=self.activation, normalize_rows=self.lln, mean=self.mean, std=self.std)


def _atomic_folder(target: Path) -> tuple[Path, Path]:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    return tmp, target


def _commit_folder(tmp: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def save(folder: Path, model: torch.nn.Module, config: TrainConfig, epoch: int, history: list[dict[str, Any]],
         optimizer: torch.optim.Optimizer | None = None, trained: torch.nn.Module | None = None,
         average_updates: int | None = None) -> None:
    """Write a checkpoint; ``model`` is its network, ``trained`` the raw weights behind an average."""
    tmp, target = _atomic_folder(Path(folder))
    try:
        save_file(_state_tensors(model), tmp / "model.safetensors")
        if optimizer is not None:
            save_file(_optimizer_tensors(optimizer), tmp / "optimizer.safetensors")
        if trained is not None:
            save_file(_state_tensors(trained), tmp / "trained.safetensors")
        state = {"format": FORMAT, "config": asdict(config), "epoch": epoch, "history": history}
        if average_updates is not None:
            state["average_updates"] = average_updates
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _commit_folder(tmp, target)


def _state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    return tensors


def load_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "state.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: missing state.json")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} is not a gloro-serve checkpoint state (format {FORMAT})")
    epoch, history = state.get("epoch"), state.get("history")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0 or not isinstance(history, list):
        raise CheckpointError(f"{path} is corrupt: it needs an epoch count (an integer >= 0) and a history list")
    return state


def load_config(folder: Path) -> TrainConfig:
    return _config_from(load_state(folder)["config"], f"{folder}/state.json")


# The JSON types a saved config's values may have, by the type of each field's default (fields
# whose default is None take anything: the code that reads them checks).
CONFIG_TYPES: dict[type, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list,)}


def _config_from(raw: dict[str, Any], where: str) -> TrainConfig:
    """A saved training config; keys this version does not know are dropped."""
    defaults = asdict(TrainConfig())
    for key, value in raw.items():
        expected = defaults.get(key)
        kinds = CONFIG_TYPES.get(type(expected))
        if key in defaults and kinds and (not isinstance(value, kinds) or isinstance(value, bool) != (bool in kinds)):
            raise CheckpointError(f"{where} has a bad config: {key} must be a {type(expected).__name__}, "
                                  f"not {str(value)[:40]!r}")
    try:
        return TrainConfig(**{k: v for k, v in raw.items() if k in defaults})
    except TypeError as exc:
        raise CheckpointError(f"{where} has a bad config: {exc}") from None


def load_model(folder: Path, config: TrainConfig | None = None,
               weights: str = "model") -> tuple[GloroNet, TrainConfig, dict[str, Any]]:
    """Rebuild the model from the checkpoint's own config (or ``config``) and load its weights.

    ``weights="trained"`` loads the raw optimised weights of a run that keeps a weight average.
    """
    folder = Path(folder)
    state = load_state(folder)
    config = config or load_config(folder)
    return _network(config, load_weights(folder, weights), folder), config, state


def _network(config: TrainConfig, tensors: dict[str, torch.Tensor], where: Path,
             fresh: tuple[str, ...] = ()) -> GloroNet:
    """``config``'s network holding ``tensors``; the ``fresh`` entries keep their new initial values."""
    return fill(TrainConfig.build_model, config, tensors, where, fresh)


def non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """The names of the module's floating-point tensors holding a NaN or an infinity."""
    return [name for name, t in module.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]


def fill(build: Callable[[TrainConfig], ModuleT], config: TrainConfig, tensors: dict[str, torch.Tensor],
         where: Path, fresh: tuple[str, ...] = ()) -> ModuleT:
    """``build(config)`` holding exactly ``tensors`` (bar the ``fresh`` entries), or a CheckpointError."""
    try:
        module = build(config)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    initial = module.state_dict()
    try:
        module.load_state_dict({**tensors, **{k: initial[k] for k in fresh}}, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{where} does not fit architecture {config.architecture!r} "
                              f"({config.activation}): {first}") from None
    broken = non_finite_tensors(module)
    if broken:  # a diverged run's weights: no bound, no certificate to compute from them
        raise CheckpointError(f"{where} holds weights that are not finite (NaN or inf) in {', '.join(broken[:3])}"
                              f"{' ...' if len(broken) > 3 else ''}")
    return module


@dataclass(frozen=True)
class ExportedVersion:
    """What a model repository version holds for torch: its training config, epochs and tensors."""

    config: TrainConfig
    epochs: int
    tensors: dict[str, torch.Tensor]
    train_command: str | None = None
    safety_factor: float | None = None  # what its certificates were computed with
    exports: tuple[dict[str, Any], ...] = ()  # date, code version and sha256 of its export and those before it
    margin_allowance: float = 0.0  # what its head takes off each margin for float32 rounding (0 before it had one)


def _bound_number(value: Any, folder: Path, key: str, low: float, what: str) -> float | None:
    """A number of a version's manifest `bound` (None if it does not say); a malformed one is an
    error, not a reason to certify under another value."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < float("inf"):
        raise CheckpointError(f"{folder}/gloro.json: bound.{key} must be {what}, got {value!r}")
    return float(value)


def read_exported(folder: Path) -> ExportedVersion:
    """Read an exported version's gloro.json provenance and model.safetensors, or say what is wrong."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "gloro.json").read_text())
        provenance = manifest["provenance"]
        raw, epochs = dict(provenance["config"]), int(provenance["epochs"])
        command = provenance.get("train_command")
        earlier = provenance.get("earlier_exports")
        earlier = [e for e in earlier if isinstance(e, dict)] if isinstance(earlier, list) else []
        onnx_entry = manifest.get("onnx")
        exports = (*earlier, {"date": provenance.get("date"), "code_version": provenance.get("code_version"),
                              "sha256": onnx_entry.get("sha256") if isinstance(onnx_entry, dict) else None})
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{folder}/gloro.json has no usable training provenance: {exc}") from None
    config = _config_from(raw, f"{folder}/gloro.json")
    known = command if isinstance(command, str) and command != "unknown" else None
    bound = manifest.get("bound", {})
    fields = bound if isinstance(bound, dict) else {"safety_factor": bound}
    factor = _bound_number(fields.get("safety_factor"), folder, "safety_factor", 1.0, "a number of at least 1")
    # what its head takes off each margin for float32 rounding; 0 in manifests older than it
    allowance = _bound_number(fields.get("margin_allowance"), folder, "margin_allowance", 0.0, "a number >= 0") or 0.0
    return ExportedVersion(config, epochs, _load_tensors(folder / "model.safetensors"), known, factor, exports,
                           allowance)


def _exported_network(folder: Path) -> tuple[GloroNet, ExportedVersion]:
    """The network of an exported model repository version, to fine-tune from or re-export.

    The export keeps the body's tensors (power iterates included) and the head's effective weight
    and bias; the head's power iterate starts afresh, as it converges in the first steps anyway."""
    exported = read_exported(folder)
    state = {k: v for k, v in exported.tensors.items() if k.startswith("body.")}
    for ours, theirs in (("head.linear.weight", "weight"), ("head.linear.bias", "bias")):
        if theirs in exported.tensors:
            state[ours] = exported.tensors[theirs]
    return _network(exported.config, state, Path(folder) / "model.safetensors", fresh=("head.u",)), exported


@dataclass(frozen=True)
class Source:
    """A network to export or fine-tune from, with what its folder says about it. A training
    checkpoint records no training command, and its certificates get the current safety factor."""

    model: GloroNet
    config: TrainConfig
    epochs: int  # all the epochs behind its weights
    train_command: str | None = None
    safety_factor: float = SAFETY_FACTOR  # an exported version's own, where its manifest says
    exports: tuple[dict[str, Any], ...] = ()  # an exported version's own export and those before it
    margin_allowance: float = 0.0  # an exported version's own; a checkpoint's is measured at its export


def load_source(folder: Path) -> Source:
    """A training checkpoint or an exported model version."""
    folder = Path(folder)
    if (folder / "gloro.json").is_file():
        network, exported = _exported_network(folder)
        return Source(network, exported.config, exported.epochs, exported.train_command,
                      exported.safety_factor or SAFETY_FACTOR, exported.exports, exported.margin_allowance)
    model, config, state = load_model(folder)
    return Source(model, config, trained_epochs(config, state))


def load_trained(folder: Path) -> tuple[GloroNet, TrainConfig, int]:
    """A training checkpoint or an exported model version: its network, config and all its epochs."""
    source = load_source(folder)
    return source.model, source.config, source.epochs


def load_weights(folder: Path, weights: str = "model") -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` or (``weights="trained"``) ``trained.safetensors``."""
    if weights not in ("model", "trained"):
        raise ValueError(f"unknown checkpoint weights {weights!r}")
    return _load_tensors(Path(folder) / f"{weights}.safetensors")


def trained_epochs(config: TrainConfig, state: dict[str, Any]) -> int:
    """All epochs behind a checkpoint's weights, including those of the run it was fine-tuned from."""
    return int(state["epoch"]) + int(config.init_epochs)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    tensors = _load_tensors(Path(folder) / "optimizer.safetensors")
    current = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, dot, key = name.partition(".")
        if not (dot and index.isdigit()):
            raise CheckpointError(f"{folder}/optimizer.safetensors is not an optimizer state: tensor {name[:40]!r}")
        state.setdefault(int(index), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state in {folder} does not fit: {exc}") from None
