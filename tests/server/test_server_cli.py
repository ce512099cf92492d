"""The CLI: flags and GLORO_* variables mirror ServerSettings; bad values give one line, exit 2."""

from __future__ import annotations

import builtins
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import make_settings
from server.cli import main, parse_settings, serve
from server.settings import ServerSettings, shipped_repository

pytestmark = pytest.mark.unit

UNLIKE_EITHER_S = 0.001  # a switch interval that neither case sets


def test_defaults_serve_the_shipped_repository_on_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("GLORO_"):
            monkeypatch.delenv(name)
    settings = parse_settings([])
    assert (settings.host, settings.port, settings.default_model) == ("127.0.0.1", 8000, "mnist-2c2f")
    assert settings.repository_path() == shipped_repository()
    assert shipped_repository().parts[-2:] == ("server", "model_repository")
    assert settings.access_log is False


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLORO_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("GLORO_API_KEY", "s3cret")
    settings = parse_settings(["--port", "9001", "--max-delay-ms", "0.5", "--backend", "torch", "--access-log"])
    assert settings.port == 9001 and settings.max_delay_ms == 0.5 and settings.backend == "torch"
    assert settings.max_batch_size == 7 and settings.api_key.get_secret_value() == "s3cret"
    assert settings.access_log is True
    assert parse_settings(["--max-batch-size", "3"]).max_batch_size == 3  # flag beats env
    assert parse_settings(["--backend", "torch", "--cuda-wait", "block"]).cuda_wait == "block"
    assert parse_settings([]).cuda_wait == "spin"
    assert parse_settings(["--spin-us", "0"]).spin_us == 0 and parse_settings([]).spin_us == 100


def test_grpc_is_off_unless_a_port_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_settings([]).grpc_port is None
    assert parse_settings(["--grpc-port", "8081"]).grpc_port == 8081
    monkeypatch.setenv("GLORO_GRPC_PORT", "8081")  # as the images set it
    assert parse_settings([]).grpc_port == 8081
    assert parse_settings(["--grpc-port", "off"]).grpc_port is None
    monkeypatch.setenv("GLORO_GRPC_PORT", "")
    assert parse_settings([]).grpc_port is None


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "abc"], "--port:"),
        (["--port", "70000"], "--port:"),
        (["--backend", "tensorflow"], "--backend:"),
        (["--max-batch-size", "0"], "--max-batch-size:"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--max-bytes-in-flight", "2000"], "--max-bytes-in-flight (2000) must be at least --max-body-bytes (8388608)"),
        (["--backend", "torch", "--cuda-wait", "sometimes"], "--cuda-wait:"),
        (["--cuda-wait", "block"], "--cuda-wait block applies to --backend torch only (the onnxruntime backend"),
        (["--spin-us", "-1"], "--spin-us:"),
        (["--backend", "torch", "--spin-us", "0"], "--spin-us 0 applies to --backend onnxruntime only"),
        (["--grpc-port", "0"], "--grpc-port:"),
        (["--grpc-port", "grpc"], "--grpc-port:"),
        (["--port", "9000", "--grpc-port", "9000"], "--grpc-port 9000 is --port too"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gloro-serve: error:") and needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GLORO_MAX_QUEUE", "many")
    assert main(["serve"]) == 2
    assert "GLORO_MAX_QUEUE:" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--max-batch-size" in capsys.readouterr().out


def test_train_without_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch.") or name.startswith("models"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert main(["train", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'gloro-serve[train]'" in err and len(err.splitlines()) == 1


def test_train_is_delegated_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = type(sys)("models.cli")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "models.cli", fake)
    assert main(["export", "--out", "x"]) == 0
    assert calls == [["export", "--out", "x"]]


def test_intra_op_threads_share_the_cores_among_instances_and_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(8)))
    assert ServerSettings().intra_op_threads() == 0  # one batch thread in one process: the backend's default
    assert ServerSettings(instances=2).intra_op_threads() == 4
    assert ServerSettings(instances=3).intra_op_threads() == 2
    assert ServerSettings(instances=16).intra_op_threads() == 1
    assert ServerSettings(instances=2, threads=3).intra_op_threads() == 3  # an explicit --threads wins
    assert ServerSettings(workers=2).intra_op_threads() == 4  # each process's share of the cores
    assert ServerSettings(workers=2, instances=2).intra_op_threads() == 2
    assert ServerSettings(workers=64).intra_op_threads() == 1


def test_a_replacement_backend_factory_cannot_go_to_worker_processes(tiny_repo: Path) -> None:
    settings = ServerSettings(repository=tiny_repo, default_model="tiny", workers=2)
    with pytest.raises(ValueError, match="worker processes build their own"):
        serve(settings, backends=lambda spec: None)


def serve_without_uvicorn(settings: ServerSettings, monkeypatch: pytest.MonkeyPatch,
                          look: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`serve(settings)` up to where uvicorn would run: what `look()` sees then. The models are
    stopped after, and the collector's state that serve sets for its process is put back."""
    seen: dict[str, Any] = {}

    class NoUvicorn:
        def __init__(self, config: Any) -> None:
            seen["app"] = config.app

        def run(self) -> bool:
            seen.update(look())
            return True

    monkeypatch.setattr("server.cli.DrainingServer", NoUvicorn)
    threshold = gc.get_threshold()
    try:
        assert serve(settings) == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        if "app" in seen:
            seen["app"].state.models.stop_all(0.0)
    return seen


@pytest.mark.parametrize("flags, interval_s", [({}, 0.005), ({"switch_interval_ms": 0.5}, 0.0005)])
def test_serve_sets_the_gil_switch_interval_for_its_process(
    flags: dict[str, float], interval_s: float, tiny_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's own 5 ms unless --switch-interval-ms says otherwise."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(UNLIKE_EITHER_S)
    try:
        seen = serve_without_uvicorn(make_settings(tiny_repo, **flags), monkeypatch,
                                     lambda: {"interval": sys.getswitchinterval()})
    finally:
        sys.setswitchinterval(before)
    assert seen["interval"] == pytest.approx(interval_s)


def test_serve_freezes_its_startup_heap_and_collects_the_young_less_often(
    tiny_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the models are loaded and before uvicorn runs: what was built so far is frozen out of
    the collector's reach, and the youngest generation waits for --gc-threshold allocations."""
    before = gc.get_threshold()
    gc.unfreeze()
    seen = serve_without_uvicorn(make_settings(tiny_repo, gc_threshold=12_345), monkeypatch,
                                 lambda: {"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()})
    assert seen["frozen"] > 10_000  # the imported modules, the app and its models at least
    assert seen["threshold"] == (12_345, *before[1:])


def test_a_switch_interval_out_of_range_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--switch-interval-ms", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gloro-serve: error: --switch-interval-ms:") and err.count("\n") == 1


def test_the_workers_supervisor_checks_the_repository_on_the_cpu(tiny_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It loads every model once to refuse a bad repository in one line; on a GPU machine that load
    must not leave a CUDA context (GPU memory) in the supervisor."""
    import server.workers as workers

    built: list[ServerSettings] = []
    real_loaded_app = workers.loaded_app
    monkeypatch.setattr(workers, "loaded_app", lambda s: built.append(s) or real_loaded_app(s))
    workers.check_servable(ServerSettings(repository=tiny_repo, default_model="tiny", workers=2, device="cuda"))
    assert [s.device for s in built] == ["cpu"] and built[0].workers == 2


def test_each_worker_gets_a_listener_of_its_own_where_so_reuseport_spreads_connections(
        tiny_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import uvicorn

    import server.workers as workers

    settings = ServerSettings(repository=tiny_repo, host="127.0.0.1", port=0, workers=2, reuse_port=True)
    config = uvicorn.Config("server.app:create_app", host=settings.host, port=settings.port)
    monkeypatch.setattr(workers, "reuse_port_spreads_connections", lambda: True)
    held, listeners = workers.worker_listeners(settings, config)
    with held:
        port = held.getsockname()[1]
        assert port != 0 and held.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        [listener] = listeners
        # what a worker binds: the port the supervisor chose (0 was asked for), beside the held socket
        assert isinstance(listener, workers.OwnListener) and (listener.host, listener.port) == ("127.0.0.1", port)
        with workers.reuse_port_socket(listener.host, listener.port) as own:
            assert own.getsockname()[1] == port

    for where, asked in (("refused", True), ("not asked for", False)):
        monkeypatch.setattr(workers, "reuse_port_spreads_connections", lambda: where != "refused")
        shared, listeners = workers.worker_listeners(settings.model_copy(update={"reuse_port": asked}), config)
        with shared:
            assert listeners == [shared] and not shared.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), where
