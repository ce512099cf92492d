"""Reading a model repository (docs/artifact.md): manifests, sha256, path safety, versions.

Nothing here unpickles or imports a model; it reads JSON and hashes bytes. Every problem is a
`RepositoryError` with a one-line message, raised before the server starts listening.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from server.errors import RepositoryError, describe_validation_errors

log = logging.getLogger("server.repository")

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
MANIFEST = "gloro.json"
MAX_MANIFEST_BYTES = 1 << 20
CHANNELS = {"L": 1, "RGB": 3}


class InputSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    shape: tuple[int, int, int]
    color_mode: Literal["L", "RGB"]
    range: tuple[float, float] = (0.0, 1.0)

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if any(not 1 <= d <= 8192 for d in self.shape):
            raise ValueError(f"input.shape {list(self.shape)} must be three sizes in 1..8192")
        if self.shape[0] != CHANNELS[self.color_mode]:
            raise ValueError(
                f"input.shape has {self.shape[0]} channels but color_mode {self.color_mode} "
                f"has {CHANNELS[self.color_mode]}"
            )
        if tuple(self.range) != (0.0, 1.0):
            raise ValueError(f"input.range must be [0.0, 1.0], not {list(self.range)}")
        return self


class HashedFile(BaseModel):
    """A file of the version folder and the sha256 it must have."""

    model_config = ConfigDict(frozen=True, extra="allow")

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("file")
    @classmethod
    def _bare_name(cls, value: str) -> str:
        if value in ("", ".", "..") or "/" in value or "\\" in value or "\x00" in value:
            raise ValueError(f"file must be a file name in the version folder, not {value!r}")
        return value


class OnnxSpec(HashedFile):
    file: str = "model.onnx"
    opset: int | None = None


class WeightsSpec(HashedFile):
    """model.safetensors, for the torch backend (manifests written since 2026-12-04 list it)."""

    file: str = "model.safetensors"


class Manifest(BaseModel):
    """gloro.json, format_version 1. Unknown keys are kept, not refused."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format_version: Literal[1]
    name: str
    version: str
    input: InputSpec
    classes: list[str] = Field(min_length=2, max_length=100_000)
    epsilon: float = Field(ge=0)
    train_epsilon: float | None = None
    architecture: str | None = None
    bound: dict[str, Any] | None = None
    onnx: OnnxSpec
    safetensors: WeightsSpec | None = None
    metrics: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("epsilon")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("epsilon must be finite")
        return value


@dataclass(frozen=True)
class ModelSpec:
    """One servable model: the highest (or chosen) version of a folder in the repository."""

    name: str
    version: str
    directory: Path
    onnx_path: Path
    manifest: Manifest

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.manifest.input.shape

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def epsilon(self) -> float:
        return self.manifest.epsilon

    def weights_path(self) -> Path:
        """model.safetensors, checked against the manifest's sha256 (the torch backend reads it);
        RepositoryError if the manifest lists none or the file is not the one exported."""
        if self.manifest.safetensors is None:
            raise RepositoryError(
                f"{self.directory / MANIFEST} lists no safetensors file with its sha256 (exported before "
                "2026-12-04): re-export the version to serve it with the torch backend"
            )
        return verified_file(self.directory, self.directory, self.manifest.safetensors)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _inside(path: Path, root: Path, what: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise RepositoryError(f"{what} {path} resolves to {resolved}, outside the repository {root}")
    return resolved


def read_manifest(version_dir: Path, root: Path) -> Manifest:
    path = _inside(version_dir / MANIFEST, root, "manifest")
    if not path.is_file():
        raise RepositoryError(f"{version_dir}: no {MANIFEST} (every version folder needs its manifest)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise RepositoryError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise RepositoryError(f"{path}: must hold a JSON object, not {type(raw).__name__}")
    if raw.get("format_version") != 1:
        raise RepositoryError(
            f"{path}: unknown format_version {raw.get('format_version')!r} (this server reads 1)"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise RepositoryError(f"{path}: {describe_validation_errors(exc.errors())}") from None


def verified_file(version_dir: Path, root: Path, spec: HashedFile) -> Path:
    """The version folder's file named by `spec`, inside `root`, present, with the sha256 it names."""
    path = _inside(version_dir / spec.file, root, "model file")
    if not path.is_relative_to(version_dir.resolve()):
        raise RepositoryError(f"{path}: the file must lie in {version_dir}")
    if not path.is_file():
        raise RepositoryError(f"{version_dir}: {spec.file} is missing")
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise RepositoryError(
            f"{path}: sha256 {actual} does not match the manifest's {spec.sha256}; "
            "refusing a model that is not the one exported"
        )
    return path


def load_version(root: Path, name: str, version: str) -> ModelSpec:
    """Validate one version folder: manifest, names, paths, sha256 of the ONNX file."""
    version_dir = _inside(root / name / version, root, "version folder")
    manifest = read_manifest(version_dir, root)
    if manifest.name != name or manifest.version != version:
        raise RepositoryError(
            f"{version_dir / MANIFEST}: says {manifest.name!r} version {manifest.version!r} "
            f"but lies in {name}/{version}"
        )
    return ModelSpec(name, version, version_dir, verified_file(version_dir, root, manifest.onnx), manifest)


def versions_of(model_dir: Path) -> list[str]:
    return sorted(
        (p.name for p in model_dir.iterdir() if p.is_dir() and VERSION.match(p.name)), key=int
    )


def load_repository(root: Path) -> dict[str, ModelSpec]:
    """Every model in the repository, each at its highest version, validated."""
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a folder")
    root = root.resolve()
    models: dict[str, ModelSpec] = {}
    for model_dir in sorted(root.iterdir()):
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        if not MODEL_NAME.match(model_dir.name):
            log.warning("skipping %s: not a valid model name", model_dir)
            continue
        _inside(model_dir, root, "model folder")
        versions = versions_of(model_dir)
        if not versions:
            raise RepositoryError(f"{model_dir}: no version folder (1, 2, ...)")
        models[model_dir.name] = load_version(root, model_dir.name, versions[-1])
    if not models:
        raise RepositoryError(f"model repository {root} holds no model")
    return models
