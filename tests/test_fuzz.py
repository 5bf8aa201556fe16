"""Fuzzed files: every corrupted WAV, .npy, JPEG or CSV gives a correct sample or a DataError
naming the file, never another exception or a wrong sample (``benchmarks/fuzz_readers.py`` runs
the same cases by the ten thousand)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from benchmarks import fuzz_readers
from benchmarks.fuzz_readers import DATA_ERROR, OK, Fuzzer

# A few hundred seeded cases per file type: .npy spans three targets, CSV two.
CASES = {"wav": 300, "jpeg": 300, "npy_audio": 100, "npy_depth_v1": 100, "npy_depth_v2": 100,
         "csv_v1": 150, "csv_v2": 150}


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Fuzzer(tmp_path_factory.mktemp("fuzz"))
    torch.set_num_threads(threads)


@pytest.mark.parametrize("target", list(CASES))
def test_every_corruption_is_a_correct_sample_or_a_data_error_naming_the_file(fuzzer, target):
    cases = list(fuzzer.cases([target], range(CASES[target])))
    escapes = [case for case in cases if case.escaped]
    assert not escapes, "\n".join(f"seed {c.seed} ({c.mutation}): {c.outcome}: {c.detail}"
                                  for c in escapes[:5])
    outcomes = Counter(case.outcome for case in cases)
    # The mutations really damage the files: a good share is refused...
    assert outcomes[DATA_ERROR] >= CASES[target] // 4, outcomes
    # ...and each mutation kind was drawn.
    assert {case.mutation for case in cases} == set(fuzz_readers.MUTATIONS[target]), outcomes


def test_pristine_files_read_as_correct_samples(fuzzer):
    for fmt in ("v1", "v2"):
        sample = fuzzer.dataset(fmt)[0]
        assert fuzz_readers.sample_problem(sample, fuzz_readers.MAX_DEPTH_M) == ""


def test_the_fuzzer_reports_escapes(fuzzer, monkeypatch):
    """It can fail: a reader that lets a foreign exception or a NaN through is caught."""
    from datasets import batvision

    def raising(path: Path) -> np.ndarray:
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(batvision, "read_wav", raising)
    case = fuzzer.run("wav", 0)
    assert case.escaped and case.outcome == "ZeroDivisionError"

    monkeypatch.setattr(batvision, "read_wav",
                        lambda path: np.full((2, 2_000), np.nan, np.float32))
    case = fuzzer.run("wav", 0)
    assert case.escaped and case.outcome == "bad sample" and "audio" in case.detail
    monkeypatch.undo()
    fuzzer.restore("wav")
    assert fuzzer.run("jpeg", 10**6).outcome in (OK, DATA_ERROR)
    fuzzer.restore("jpeg")
