"""benchmarks/gpu_check.py: its goal verdict, and its dry mode end to end on the CPU (every
section's code path at tiny sizes)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from benchmarks import gpu_check


def _row(model: str = "student", precision: str = "bf16", samples_per_s: float = 950.0,
         status: str = "ok", mode: str = "train") -> Dict[str, Any]:
    return {"model": model, "mode": mode, "precision": precision, "status": status,
            "samples_per_s": samples_per_s if status == "ok" else None}


def test_goal_takes_the_best_bf16_student_training_row() -> None:
    rows = [_row(samples_per_s=700.0), _row(samples_per_s=910.0),
            _row(precision="fp16", samples_per_s=2000.0), _row(model="teacher", samples_per_s=5e3),
            _row(mode="eval", samples_per_s=4e3)]
    verdict = gpu_check.goal_verdict(rows, dry=False)
    assert (verdict["verdict"], verdict["samples_per_s"]) == ("met", 910.0)
    verdict = gpu_check.goal_verdict(rows[:1] + rows[2:], dry=False)
    assert (verdict["verdict"], verdict["samples_per_s"]) == ("not met", 700.0)


def test_goal_is_not_measured_in_dry_mode_or_without_a_row_that_ran() -> None:
    assert gpu_check.goal_verdict([_row()], dry=True)["verdict"] == "not measured"
    assert gpu_check.goal_verdict([_row(status="out of memory")],
                                  dry=False)["verdict"] == "not measured"


@pytest.mark.slow
def test_dry_mode_runs_every_section_on_the_cpu(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "check.json"
    report = gpu_check.main(["--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["mode"].startswith("dry") and report["sizes"]["image_size"] == 32

    trained = {(r["model"], r["precision"], r["channels_last"], r["compile"])
               for r in report["training"]}
    assert trained == {(model, *variant) for model in ("teacher", "student")
                       for variant in gpu_check.VARIANTS}
    assert {(r["model"], r["channels_last"]) for r in report["evaluation"]} == {
        (model, layout) for model in ("teacher", "student") for layout in (False, True)}
    for row in report["training"] + report["evaluation"]:
        assert row["status"] == "ok" and row["samples_per_s"] > 0, row
        assert row["peak_memory_gib"] is None  # measured on CUDA only

    assert report["ddp"]["backend"] == "gloo" and report["ddp"]["status"] == "ok"
    names = [r["name"] for r in report["scripts"]]
    assert names == ["torchrun train_rgb_depth.py", "evaluate.py teacher",
                     "torchrun train_binaural_attention.py", "evaluate.py student",
                     "torchrun train_distillation.py", "evaluate.py distillation"]
    for result in report["scripts"]:
        assert result["returncode"] == 0, result
        assert "--device cpu" in result["command"] and "--amp bf16" not in result["command"]
    assert report["goal"]["verdict"] == "not measured"
    assert "not measured" in capsys.readouterr().out


def test_a_variant_that_fails_is_a_row_of_the_report_not_the_end_of_the_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def compiler_failure(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("backend compiler failed\nlong traceback")

    monkeypatch.setattr(gpu_check, "build_task", compiler_failure)
    row = gpu_check.measure("student", ("bf16", False, True), gpu_check.DRY_SIZES,
                            torch.device("cpu"), "eager", train=True)
    assert row["status"] == "error: RuntimeError: backend compiler failed"
    assert row["samples_per_s"] is None
    assert gpu_check.goal_verdict([row], dry=False)["verdict"] == "not measured"


# Compiles and trains each compiled variant.
@pytest.mark.slow
def test_compile_only_and_one_section_measure_just_the_compiled_training_variants(tmp_path: Path) -> None:
    report = gpu_check.main(["--device", "cpu", "--compile", "only", "--models", "student",
                             "--sections", "training",
                             "--out", str(tmp_path / "compiled.json")])
    assert [(r["precision"], r["channels_last"]) for r in report["training"]] == [
        (precision, layout) for precision, layout, compiled in gpu_check.VARIANTS if compiled]
    assert all(r["compile"] and r["status"] == "ok" for r in report["training"])
    assert report["evaluation"] == [] and report["ddp"] is None and report["scripts"] == []


def test_the_student_measured_is_the_recipe_s_or_the_one_asked_for() -> None:
    cpu = torch.device("cpu")
    recipe = gpu_check.build_task("student", gpu_check.DRY_SIZES, cpu, False, None).model
    assert recipe.config["attention_levels"] == [3, 4, 5]
    assert recipe.config["base_channels"] == gpu_check.DRY_SIZES.base_channels
    cheaper = replace(gpu_check.DRY_SIZES, student_base_channels=8, attention_levels=(4, 5))
    student = gpu_check.build_task("student", cheaper, cpu, False, None).model
    teacher = gpu_check.build_task("teacher", cheaper, cpu, False, None).model
    assert student.config["base_channels"] == 8 and student.config["attention_levels"] == [4, 5]
    assert teacher.config["base_channels"] == gpu_check.DRY_SIZES.base_channels
    assert gpu_check.goal_verdict([], dry=True, sizes=cheaper)["goal"].startswith(
        "student (base 8, attention 4,5), 256x256, batch 64, bf16")
