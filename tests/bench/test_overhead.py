"""bench/overhead.py: the head's cost against logits only, eagerly and, on CUDA, as CUDA graphs."""

from __future__ import annotations

import pytest

from bench import models, overhead

torch = pytest.importorskip("torch", reason="the torch runners need the train extra")


@pytest.fixture(scope="module")
def mnist_case(tmp_path_factory: pytest.TempPathFactory) -> models.ModelCase:
    return models.prepare("mnist", tmp_path_factory.mktemp("overhead"))


@pytest.mark.integration
def test_cuda_graphs_are_refused_off_cuda_in_one_line(mnist_case) -> None:
    with pytest.raises(ValueError, match="CUDA graphs need the torch backend on CUDA"):
        overhead.run(mnist_case, [1], 2, 0.001, "torch", "cpu", graphs=True)


@pytest.mark.integration
def test_the_torch_modules_are_timed_with_and_without_the_head(mnist_case) -> None:
    result = overhead.run(mnist_case, [1, 4], 2, 0.001, "torch", "cpu")
    assert result["model"] == "mnist-2c2f" and result["backend"] == "torch"
    assert [r["batch"] for r in result["rows"]] == [1, 4]
    assert all(r["head_us"] > 0 and r["logits_only_us"] > 0 for r in result["rows"])


@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_on_cuda_the_graphs_replay_both_sides(mnist_case) -> None:
    result = overhead.run(mnist_case, [1, 32], 2, 0.001, "torch", "cuda", graphs=True)
    assert result["model"] == "mnist-2c2f (CUDA graphs)"
    assert all(r["head_us"] > 0 and r["logits_only_us"] > 0 for r in result["rows"])
