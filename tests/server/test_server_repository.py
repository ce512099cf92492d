"""Model integrity: manifests, sha256, path safety and versions are checked before serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from server.cli import main
from server.errors import RepositoryError
from server.repository import load_repository
from tiny_model import write_model

pytestmark = pytest.mark.unit


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write_model(root, "tiny", "1")
    return root


def edit_manifest(repo: Path, **changes: object) -> None:
    path = repo / "tiny" / "1" / "gloro.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_highest_version_is_served(repo: Path) -> None:
    write_model(repo, "tiny", "2")
    write_model(repo, "tiny", "10")
    specs = load_repository(repo)
    assert specs["tiny"].version == "10" and specs["tiny"].manifest.epsilon == 0.3


def refused(repo: Path, match: str) -> None:
    with pytest.raises(RepositoryError, match=match):
        load_repository(repo)


def test_sha256_mismatch_is_refused(repo: Path) -> None:
    with (repo / "tiny" / "1" / "model.onnx").open("ab") as f:
        f.write(b"\0")
    refused(repo, r"sha256 [0-9a-f]{64} does not match the manifest")


def test_missing_manifest_is_refused(repo: Path) -> None:
    (repo / "tiny" / "1" / "gloro.json").unlink()
    refused(repo, "no gloro.json")


def test_malformed_manifest_is_refused(repo: Path) -> None:
    (repo / "tiny" / "1" / "gloro.json").write_text("{not json")
    refused(repo, "not valid JSON")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format_version": 2}, "unknown format_version 2"),
        ({"epsilon": -1}, "epsilon"),
        ({"classes": ["a"]}, "classes"),
        ({"input": {"shape": [3, 28, 28], "color_mode": "L"}}, "3 channels but color_mode L"),
        ({"name": "other"}, "says 'other' version '1' but lies in tiny/1"),
        ({"onnx": {"file": "../../outside.onnx", "sha256": "0" * 64}}, "onnx.file: Value error, file must be a file name"),
    ],
)
def test_invalid_manifest_fields_are_refused(repo: Path, changes: dict, match: str) -> None:
    edit_manifest(repo, **changes)
    refused(repo, match)


def test_model_folder_outside_the_root_is_refused(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    write_model(outside, "evil", "1")
    (repo / "evil").symlink_to(outside / "evil", target_is_directory=True)
    refused(repo, "outside the repository")


def test_onnx_symlink_outside_the_root_is_refused(repo: Path, tmp_path: Path) -> None:
    onnx = repo / "tiny" / "1" / "model.onnx"
    shutil.move(onnx, tmp_path / "model.onnx")
    onnx.symlink_to(tmp_path / "model.onnx")
    refused(repo, "outside the repository")


def test_empty_repository_and_model_without_versions_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, "holds no model")
    (tmp_path / "lonely").mkdir()
    refused(tmp_path, "no version folder")


def test_cli_refuses_at_start_with_one_line(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "tiny" / "1" / "gloro.json").unlink()
    assert main(["serve", "--repository", str(repo), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gloro-serve: error: cannot serve:") and "no gloro.json" in err
    assert len(err.splitlines()) == 1


def test_cli_refuses_unknown_default_model(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repository", str(repo), "--default-model", "nope"]) == 2
    assert "default model 'nope' is not in" in capsys.readouterr().err
