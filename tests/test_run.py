"""training.run: resuming (a run of another model or kind, other data settings or a
non-finite checkpoint are refused and nothing is written) and the config.yaml a run writes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train_binaural_attention
import train_rgb_depth
from common.errors import UsageError
from datasets.cache import CACHE_FORMAT_VERSION
from tests.conftest import parse, stop_message, train_argv
from training import cli
from training.checkpoint import (
    FORMAT_VERSION, LAST_CHECKPOINT, RESOLVED_CONFIG_FILE, load_checkpoint,
)
from training.run import model_config, start_run, write_resolved_config


@pytest.mark.slow
def test_resume_with_another_model_is_refused_and_writes_nothing(
        data_root: Path, tmp_path: Path) -> None:
    train_rgb_depth.main(train_argv(data_root, tmp_path, "teacher", "--nb_epochs", "1"))
    run = tmp_path / "teacher"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(SystemExit) as error:
        train_binaural_attention.main(["--resume", str(run), "--num_workers", "0"])
    message = str(error.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "train_rgb_depth.py" in message and "not train_binaural_attention.py" in message
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    # A fresh run aimed at the same folder, and a contradicting model flag, are refused too.
    for argv in (train_argv(data_root, tmp_path, "teacher", "--nb_epochs", "1"),
                 ["--resume", str(run), "--base_channels", "8"]):
        with pytest.raises(SystemExit) as error:
            train_rgb_depth.main(argv)
        assert str(error.value.code).startswith("error: ")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.slow
def test_resume_refuses_other_data_settings_and_non_finite_checkpoints(
        data_root: Path, tmp_path: Path) -> None:
    train_rgb_depth.main(train_argv(data_root, tmp_path, "run", "--nb_epochs", "1"))
    run = tmp_path / "run"
    last = run / LAST_CHECKPOINT
    saved = load_checkpoint(last)
    config = json.loads((run / "config.json").read_text())
    assert config["identity"] == saved["identity"]
    assert saved["identity"]["kind"] == "teacher" and saved["identity"]["model"] == "rgb_depth"
    assert saved["identity"]["settings"]["model"] == {"base_channels": 4}
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    message = stop_message(["--resume", str(run), "--nb_epochs", "2", "--num_workers", "0",
                             "--mirror_augment"])
    assert message == (f"error: {last}: cannot resume: --mirror_augment: False -> True (start a "
                       "new run or use --overwrite)")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    # The cache's 8-bit spectrograms are other inputs than the files' float32 ones.
    message = stop_message(["--resume", str(run), "--nb_epochs", "2", "--num_workers", "0",
                             "--cache_dir", str(tmp_path / "cache")])
    assert message == (f"error: {last}: cannot resume: inputs: read from the files -> cache "
                       f"format {CACHE_FORMAT_VERSION} (audio scaled-uint8) (start a new run or "
                       "use --overwrite)")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    saved["model_state"]["head.conv.bias"] = saved["model_state"]["head.conv.bias"] * float("nan")
    torch.save(saved, last)  # as a diverged run of an older version could have written it
    message = stop_message(["--resume", str(run), "--nb_epochs", "2", "--num_workers", "0"])
    assert message == (f"error: {last}: holds non-finite values (model_state.head.conv.bias): "
                       "the run had diverged; use a checkpoint from before")


def _fake_checkpoint(path: Path, kind: str, model_name: str) -> None:
    path.parent.mkdir(parents=True)
    torch.save({"format_version": FORMAT_VERSION, "model_name": model_name, "model_config": {},
                "model_state": {}, "args": {}, "identity": {"kind": kind}}, path)


@pytest.mark.parametrize("saved_kind, script_kind", [("kd", "student"), ("student", "kd")])
def test_resuming_a_run_of_another_kind_stops(tmp_path: Path, saved_kind: str,
                                              script_kind: str) -> None:
    run_dir = tmp_path / "run"
    _fake_checkpoint(run_dir / LAST_CHECKPOINT, saved_kind, "binaural_attention")
    with pytest.raises(UsageError, match=f"a {cli.KIND_SCRIPTS[saved_kind]} run; resume it"):
        start_run(cli.build_parser(script_kind, None), ["--resume", str(run_dir)])


def test_resolved_config_repeats_the_run(tmp_path: Path) -> None:
    """config.yaml, as a run writes it, given back to --config gives the same arguments."""
    args = parse("kd", ["--base_channels", "8", "--attention_levels", "4,5", "--lambda_feat",
                        "0.05", "--feature_levels", "d1,x3", "--mirror_augment",
                        "--max_depth", "15", "--teacher_checkpoint", "t.pth"])
    path = tmp_path / RESOLVED_CONFIG_FILE
    write_resolved_config(path, args)
    again = parse("kd", ["--config", str(path)])
    expected = {k: v for k, v in vars(args).items() if k != "config"}
    assert {k: v for k, v in vars(again).items() if k != "config"} == expected


@pytest.mark.parametrize("model", ["binaural_attention", "official_unet"])
def test_head_init_median_reaches_every_audio_model(model: str) -> None:
    """--head_init_depth median becomes the training median in both audio models' configs (the
    official U-Net once dropped it silently)."""
    args = cli.parse_script_argv("student", ["--model", model, "--head_init_depth", "median",
                                             "--image_size", "64"])
    assert model_config(args, median_depth=lambda: 2.5)["head_init_depth"] == 2.5
    args.head_init_depth = None
    assert model_config(args).get("head_init_depth") is None
