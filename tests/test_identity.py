"""Run identity (training/identity.py): what it records and how a difference is named."""
from __future__ import annotations

from training.identity import differences, digest, run_identity

ARGS = {"image_size": 32, "nb_epochs": 2, "cache_dir": "/anywhere", "threads": "auto"}
GROUPS = {"data": ["image_size"], "optimisation": ["nb_epochs"]}
CACHED = {"cache_format": 3, "forms": {"audio": "scaled-uint8"}}


def test_identity_holds_what_decides_the_result_and_not_where_it_runs() -> None:
    identity = run_identity(ARGS, GROUPS, "student", "binaural_attention", "d" * 64)
    assert identity["settings"] == {"data": {"image_size": 32}, "optimisation": {"nb_epochs": 2}}
    # Read from the files: no storage entry, so identities recorded before it existed still match.
    assert "storage" not in identity
    assert identity["fingerprint"] == digest({k: v for k, v in identity.items()
                                              if k != "fingerprint"})


def test_a_change_of_stored_inputs_is_a_difference_named_in_words() -> None:
    files = run_identity(ARGS, GROUPS, "student", "binaural_attention", "d" * 64)
    cached = run_identity(ARGS, GROUPS, "student", "binaural_attention", "d" * 64, None, CACHED)
    assert cached["storage"] == CACHED and cached["fingerprint"] != files["fingerprint"]
    assert differences(files, cached) == [
        "inputs: read from the files -> cache format 3 (audio scaled-uint8)"]
    assert differences(cached, files, ["optimisation"]) == []  # not a flag group's business
    assert differences(cached, files, ["data"]) == [
        "inputs: cache format 3 (audio scaled-uint8) -> read from the files"]
