"""Job spec validation: against itself, the model library, and the fleet it is sent to."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rayfleet.errors import BadInput
from rayfleet.cluster.spec.fleet import FleetSpec
from rayfleet.jobs.client.spec import JobSpec, check_against_fleet, load_job_spec, validate_model, workers_per_node
from tests.conftest import ROOT

FLEET = FleetSpec.model_validate({"name": "f", "pools": [
    {"name": "h100", "accelerator": "H100", "gpus_per_node": 8, "cpus_per_node": 4, "max_nodes": 2},
    {"name": "cpu", "cpus_per_node": 2, "max_nodes": 3}]})

GOOD = {"name": "j", "pool": "h100", "workers": 2, "parallelism": {"strategy": "moe", "expert_parallel": 2},
        "model": {"preset": "tiny_moe"}, "data": {"seq_len": 64, "global_batch": 8}, "steps": 10}


def write(tmp_path: Path, **changes: object) -> Path:
    spec = {**GOOD, **changes}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def check_all(path: Path) -> None:
    spec = load_job_spec(path)
    validate_model(spec, path)
    check_against_fleet(spec, FLEET, path)


def test_good_job_passes_every_check(tmp_path: Path) -> None:
    check_all(write(tmp_path))


EXAMPLE_FLEETS = {"moe-job.yaml": "local-fleet.yaml", "k8s-job.yaml": "k8s-fleet.yaml",
                  "own-data-job.yaml": "local-fleet.yaml"}


def test_example_jobs_are_valid_against_their_example_fleets() -> None:
    from rayfleet.cluster.spec.fleet import load_fleet_spec

    examples = ROOT / "manifests" / "examples"
    assert sorted(p.name for p in examples.glob("*job*.yaml")) == sorted(EXAMPLE_FLEETS)
    for job, fleet in EXAMPLE_FLEETS.items():
        spec = load_job_spec(examples / job)
        validate_model(spec, examples / job)
        check_against_fleet(spec, load_fleet_spec(examples / fleet), examples / job)


BAD = [
    ("unknown strategy", {"parallelism": {"strategy": "tp"}}, "parallelism.strategy", "'ddp', 'fsdp' or 'moe'"),
    ("batch not divisible", {"data": {"seq_len": 64, "global_batch": 7}}, "global_batch", "multiple of 2"),
    ("ep not dividing workers", {"workers": 3, "data": {"seq_len": 64, "global_batch": 9}}, "expert_parallel",
     "must divide the workers"),
    ("ep without moe", {"parallelism": {"strategy": "ddp", "expert_parallel": 2}}, "expert_parallel", "strategy: moe"),
    ("elastic max below min", {"workers": {"min": 4, "max": 2}}, "workers", "less than workers.min"),
    ("unknown preset", {"model": {"preset": "gpt5"}}, "model.preset", "valid presets"),
    ("unknown model option", {"model": {"preset": "tiny_moe", "overrides": {"windw": 8}}}, "model.overrides.windw",
     "accepted"),
    ("bad model option value", {"model": {"preset": "tiny_moe", "overrides": {"top_k": 9}}}, "model.overrides", "top_k"),
    ("moe without experts", {"model": {"preset": "tiny"}}, "parallelism.strategy", "tiny_moe"),
    ("sequence too long", {"data": {"seq_len": 4096, "global_batch": 8}}, "data.seq_len", "max_seq_len"),
    ("unknown pool", {"pool": "a100"}, "pool", "h100, cpu"),
    ("too many workers", {"workers": 64, "data": {"seq_len": 64, "global_batch": 64}}, "workers", "at most 8"),
    ("too many gpus", {"resources": {"gpus": 16}}, "resources.gpus", "at most 8"),
    ("too many cpus", {"resources": {"cpus": 6}}, "resources.cpus", "at most 4"),
    ("s3 without a bucket", {"checkpoint": {"storage": "s3://"}}, "checkpoint.storage", "s3://BUCKET/PREFIX"),
    ("checkpoints on a path", {"checkpoint": {"storage": "/mnt/ckpt"}}, "checkpoint.storage", "fleet's storage"),
]


@pytest.mark.parametrize("what,changes,field,fix", BAD, ids=[case[0] for case in BAD])
def test_bad_job_is_refused_naming_file_field_and_fix(tmp_path: Path, what: str, changes: dict, field: str,
                                                      fix: str) -> None:
    path = write(tmp_path, **changes)
    with pytest.raises(BadInput) as caught:
        check_all(path)
    message = str(caught.value)
    assert str(path) in message and field in message and fix in message, message


def test_a_cross_field_error_names_its_field_and_value_never_the_whole_spec(tmp_path: Path) -> None:
    """A check across fields (workers against the batch, workers against 1) reads like any other:
    FILE: FIELD: got VALUE: FIX, on one line, without the spec's other fields."""
    for changes, expected in (({"workers": 0}, "workers: got 0: must be at least 1"),
                              ({"workers": 3, "data": {"seq_len": 64, "global_batch": 8}},
                               "data.global_batch: got 8: must divide evenly among 3 workers; use a multiple of 3")):
        path = write(tmp_path, **changes)
        with pytest.raises(BadInput) as caught:
            check_all(path)
        assert str(caught.value) == f"{path}: {expected}"


def test_workers_per_node_counts_the_scarcer_resource() -> None:
    spec = JobSpec.model_validate({**GOOD, "resources": {"cpus": 1, "gpus": 2}})
    assert workers_per_node(spec, FLEET) == 4  # 8 GPUs / 2 = 4 < 4 CPUs / 1 = 4
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"cpus": 3})})
    assert workers_per_node(spec, FLEET) == 1


def test_the_job_schema_states_each_precision_and_bf16s_risk(tmp_path: Path) -> None:
    import json

    from tests.conftest import rayfleet

    result = rayfleet("schema", "--job", home=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    fields = json.loads(result.stdout)["properties"]
    assert "fp32 master weights" in fields["precision"]["description"]
    assert "no fp32 master copy" in fields["precision"]["description"]
    assert "auto: on cuda, not on cpu" in fields["compile"]["description"]


def test_every_job_example_validates_against_the_exported_job_schema(tmp_path: Path) -> None:
    """`rayfleet schema --job` is what an editor validates a job file with: every shipped job example
    passes it, and so does every job spec the product loads."""
    import json

    import jsonschema

    from tests.conftest import rayfleet

    result = rayfleet("schema", "--job", home=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    validator = jsonschema.Draft202012Validator(json.loads(result.stdout))
    examples = sorted((ROOT / "manifests" / "examples").glob("*job*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        load_job_spec(path)  # the product accepts it ...
        assert [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))] == [], path  # ... and the schema


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16-mixed", "bf16"])
@pytest.mark.parametrize("compile_setting", [True, False, "auto"])
def test_job_files_written_before_compile_auto_still_load(tmp_path: Path, precision: str,
                                                          compile_setting: object) -> None:
    spec = load_job_spec(write(tmp_path, precision=precision, compile=compile_setting))
    assert (spec.precision, spec.compile) == (precision, compile_setting)
