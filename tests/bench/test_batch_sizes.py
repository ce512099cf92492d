"""bench.batch_sizes: the backend's time an image at each batch size, sizes interleaved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import batch_sizes


@pytest.mark.integration
def test_each_batch_size_gets_a_time_an_image_in_every_round(tmp_path: Path) -> None:
    out = tmp_path / "bs.json"
    assert batch_sizes.main(["--model", "mnist", "--batches", "1", "8", "--rounds", "2", "--round-s", "0.05",
                             "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "mnist-2c2f" and result["threads"] == 1
    assert set(result["us_per_image"]) == {"1", "8"} and all(v > 0 for v in result["us_per_image"].values())
    assert len(result["rounds"]) == 2 and all(set(r) == {"1", "8"} for r in result["rounds"])


@pytest.mark.unit
def test_a_batch_of_zero_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        batch_sizes.main(["--batches", "0", "--out", str(tmp_path / "bs.json")])
    assert exit_.value.code == 2 and "--batches" in capsys.readouterr().err


@pytest.mark.integration
def test_several_spin_settings_are_each_timed_at_each_batch_size_in_every_round(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    real = batch_sizes.in_process_backend

    def recording(*args, spin_us: int, **kwargs):
        built.append(spin_us)
        return real(*args, spin_us=spin_us, **kwargs)

    monkeypatch.setattr(batch_sizes, "in_process_backend", recording)
    out = tmp_path / "bs.json"
    assert batch_sizes.main(["--model", "mnist", "--batches", "1", "4", "--threads", "2", "--spin-us", "0", "100",
                             "--rounds", "2", "--round-s", "0.05", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    keys = {"1 spin 0", "1 spin 100", "4 spin 0", "4 spin 100"}
    assert result["threads"] == 2 and result["spin_us"] == [0, 100] and built == [0, 100]
    assert set(result["us_per_image"]) == keys and all(v > 0 for v in result["us_per_image"].values())
    assert len(result["rounds"]) == 2 and all(set(r) == keys for r in result["rounds"])


@pytest.mark.unit
@pytest.mark.parametrize("argv", [["--spin-us", "-5"], ["--threads", "2", "--spin-us", "100", "100"],
                                  ["--threads", "1", "--spin-us", "0", "100"]])
def test_a_spin_comparison_that_cannot_mean_anything_is_a_usage_error(tmp_path: Path, capsys, argv) -> None:
    """Negative, repeated, or several with one thread (which has no pool to spin)."""
    with pytest.raises(SystemExit) as exit_:
        batch_sizes.main([*argv, "--out", str(tmp_path / "bs.json")])
    assert exit_.value.code == 2 and "--spin-us" in capsys.readouterr().err
