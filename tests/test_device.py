"""``training.device``: the CPU thread policy (explicit counts, ``OMP_NUM_THREADS``, the
free-core rule of ``auto`` and its load measurement), --amp and the flags a device cannot honour,
and the CUDA kernel settings."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from common.errors import UsageError
from tests.conftest import stop_message, train_argv
from training import device
from training.device import (
    amp_dtype, busy_cores, check_device_flags, configure_cuda_kernels, configure_threads,
    default_num_workers, free_core_threads, threads_per_job, usable_cpus,
)


@pytest.fixture(autouse=True)
def keep_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore torch's thread count; start each test without OMP_NUM_THREADS."""
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(threads)


def test_explicit_count_is_set_whatever_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert configure_threads("3") == 3
    assert torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads("2") == 2  # the flag is more specific than the environment
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("spec", ["0", "-1", "two", "1.5", ""])
def test_bad_spec_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError, match="--threads must be 'auto' or a positive integer"):
        configure_threads(spec)


@pytest.mark.parametrize("value, expected", [("3", 3), ("4,2", 4), (" 2 ", 2)])
def test_auto_takes_omp_num_threads(monkeypatch: pytest.MonkeyPatch, value: str,
                                    expected: int) -> None:
    monkeypatch.setattr(device, "busy_cores", _must_not_measure)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert configure_threads("auto", "cpu") == expected
    assert torch.get_num_threads() == expected


def test_auto_ignores_a_malformed_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    monkeypatch.setattr(device, "busy_cores", lambda: (1.0, 2))
    monkeypatch.setattr(device, "TORCH_DEFAULT_THREADS", 2)
    monkeypatch.setattr(device, "usable_cpus", lambda: 2)
    assert configure_threads("auto", "cpu") == 1


def test_auto_on_this_machine_is_between_one_and_the_cores() -> None:
    threads = configure_threads("auto", "cpu")
    assert 1 <= threads <= usable_cpus()
    assert torch.get_num_threads() == threads


def test_auto_on_cuda_keeps_the_current_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "busy_cores", _must_not_measure)
    torch.set_num_threads(1)
    assert configure_threads("auto", "cuda:0") == 1
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("load, expected", [
    ((0.05, 2), 2),   # quiet 2-core machine: torch's default
    ((1.0, 2), 1),    # one busy process: the one free core
    ((2.6, 2), 1),    # overloaded: never fewer than one
    (None, 2),        # no load readable: torch's default
])
def test_auto_uses_the_free_cores(monkeypatch: pytest.MonkeyPatch, load, expected: int) -> None:
    monkeypatch.setattr(device, "busy_cores", lambda: load)
    monkeypatch.setattr(device, "TORCH_DEFAULT_THREADS", 2)
    monkeypatch.setattr(device, "usable_cpus", lambda: 2)
    assert configure_threads("auto", "cpu") == expected
    assert torch.get_num_threads() == expected


@pytest.mark.parametrize("jobs, load, cores, expected", [
    (2, (0.0, 2), 2, 1),      # two runs started together on a quiet 2-core machine: one each
    (3, (0.0, 8), 8, 2),
    (4, (1.0, 2), 2, 1),      # never fewer than one
    (2, (4.0, 16), 16, 6),    # the free cores only: floor(16 - 4 + 0.25) = 12, shared by 2
    (2, None, 4, 2),          # no load readable: torch's default, shared
])
def test_jobs_started_together_share_the_free_cores(monkeypatch: pytest.MonkeyPatch, jobs: int,
                                                    load, cores: int, expected: int) -> None:
    monkeypatch.setattr(device, "busy_cores", lambda: load)
    monkeypatch.setattr(device, "TORCH_DEFAULT_THREADS", cores)
    monkeypatch.setattr(device, "usable_cpus", lambda: cores)
    assert threads_per_job(jobs, "cpu") == expected


def test_one_job_cuda_or_omp_num_threads_leave_each_run_its_own_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "busy_cores", _must_not_measure)
    assert threads_per_job(1, "cpu") is None
    assert threads_per_job(2, "cuda") is None
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads_per_job(2, "cpu") is None


@pytest.mark.parametrize("busy, cpus, cap, expected", [
    (0.0, 2, 2, 2),
    (0.25, 2, 2, 2),   # a core 75% idle counts as free
    (0.3, 2, 2, 1),    # 70% idle does not
    (1.0, 2, 2, 1),
    (2.5, 2, 2, 1),
    (0.0, 16, 8, 8),   # never more than torch's default
    (5.6, 16, 16, 10),  # floor(16 - 5.6 + 0.25) = 10
])
def test_free_core_threads(busy: float, cpus: int, cap: int, expected: int) -> None:
    assert free_core_threads(busy, cpus, cap) == expected


@pytest.mark.parametrize("device_name, cpus, local_processes, expected", [
    ("cpu", 16, None, 0),     # the compute threads hold every free core
    ("cuda", 16, None, 8),    # capped
    ("cuda:1", 4, None, 3),   # one core left to the process feeding the GPU
    ("cuda", 1, None, 0),
    ("cuda", 16, "4", 3),     # torchrun, 4 processes on the node: 4 cores each
])
def test_default_num_workers(monkeypatch: pytest.MonkeyPatch, device_name: str, cpus: int,
                             local_processes, expected: int) -> None:
    monkeypatch.setattr(device, "usable_cpus", lambda: cpus)
    if local_processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    assert default_num_workers(device_name) == expected


def _stat_text(user: int, idle: int) -> str:
    """A 2-CPU /proc/stat whose aggregate line has ``user`` busy and ``idle`` idle jiffies."""
    return (f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\n"
            "cpu0 1 0 0 1 0 0 0 0 0 0\ncpu1 1 0 0 1 0 0 0 0 0 0\nintr 12 0\n")


def test_busy_cores_from_proc_stat_deltas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """150 busy of 200 jiffies on 2 CPUs in the window: 1.5 cores busy (this process slept)."""
    stat = tmp_path / "stat"
    stat.write_text(_stat_text(user=1000, idle=5000))
    real_sleep = time.sleep

    def window_passes(seconds: float) -> None:
        stat.write_text(_stat_text(user=1150, idle=5050))
        real_sleep(seconds)

    monkeypatch.setattr(device.time, "sleep", window_passes)
    busy, cpus = busy_cores(window_s=0.05, stat_path=stat)
    assert cpus == 2
    assert busy == pytest.approx(1.5, abs=0.1)


def test_busy_cores_falls_back_to_the_load_average(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device.os, "getloadavg", lambda: (1.25, 0.5, 0.25))
    monkeypatch.setattr(device.os, "cpu_count", lambda: 4)
    assert busy_cores(stat_path=tmp_path / "missing") == (1.25, 4)
    monkeypatch.delattr(device.os, "getloadavg")
    assert busy_cores(stat_path=tmp_path / "missing") is None


def _must_not_measure() -> None:
    raise AssertionError("auto measured the load where the rule says it should not")


def test_amp_modes_and_flags_the_device_cannot_honour(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("none", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16  # honoured on CPU too
    assert amp_dtype("fp16", cpu) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla V100")
    with pytest.raises(UsageError) as error:
        amp_dtype("bf16", cuda)
    assert str(error.value) == "--amp bf16: Tesla V100 has no bfloat16 support; use --amp fp16"
    assert amp_dtype("fp16", cuda) is torch.float16

    args = argparse.Namespace(amp="none", sync_bn=True, compile=False)
    with pytest.raises(UsageError) as error:
        check_device_flags(args, cpu)
    assert str(error.value) == ("--sync_bn needs CUDA (SyncBatchNorm runs on GPUs only); this "
                                "run is on cpu")
    args.sync_bn, args.compile = False, True
    check_device_flags(args, cpu)
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(UsageError, match="^--compile: torch.compile is not supported"):
        check_device_flags(args, cpu)


def test_a_flag_the_device_cannot_honour_stops_the_script_with_one_line(
        data_root: Path, tmp_path: Path) -> None:
    message = stop_message(train_argv(data_root, tmp_path, "sync", "--sync_bn"))
    assert message == ("error: --sync_bn needs CUDA (SyncBatchNorm runs on GPUs only); this run "
                       "is on cpu")
    assert not (tmp_path / "sync").exists()


def test_cuda_kernel_settings_only_on_cuda_and_autotuning_only_when_not_deterministic() -> None:
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.benchmark = False
        configure_cuda_kernels(torch.device("cpu"), deterministic=False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
        configure_cuda_kernels(torch.device("cuda"), deterministic=True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark
        configure_cuda_kernels(torch.device("cuda"), deterministic=False)
        assert torch.backends.cudnn.benchmark
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = flags
