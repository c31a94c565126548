"""Fleet spec validation: good specs load; every kind of bad spec is refused clearly, exit 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from rayfleet.errors import BadInput
from rayfleet.cluster.spec.fleet import FleetSpec, load_fleet_spec, parse_bytes
from tests.conftest import ROOT, ray_daemon_pids, rayfleet

GOOD = """
name: good
pools:
  - name: h100
    accelerator: H100
    gpus_per_node: 8
    memory: 64Gi
    min_nodes: 1
    max_nodes: 4
"""

# (what is wrong, spec text, the field path the message must name, words the fix must contain)
BAD = [
    ("not YAML", "name: [unclosed\n", "line", "YAML"),
    ("not a mapping", "- a\n- b\n", "mapping", "mapping"),
    ("bad fleet name", GOOD.replace("name: good", "name: Good_Fleet"), "name", "lower-case"),
    ("unknown provider", GOOD + "provider: gcp\n", "provider", "'local', 'aws' or 'kubernetes'"),
    ("typo in a field", GOOD.replace("gpus_per_node", "gpu_per_node"), "pools[0].gpu_per_node", "did you mean 'gpus_per_node'"),
    ("max below min", GOOD.replace("max_nodes: 4", "max_nodes: 0"), "pools[0]", "max_nodes >= min_nodes"),
    ("nodes outside bounds", GOOD + "    nodes: 9\n", "pools[0]", "within min_nodes..max_nodes"),
    ("unknown accelerator", GOOD.replace("H100", "B9000"), "pools[0].accelerator", "H100"),
    ("GPUs without accelerator", GOOD.replace("    accelerator: H100\n", ""), "pools[0]", "name the GPU model"),
    ("bad memory size", GOOD.replace("64Gi", "lots"), "pools[0].memory", "64Gi"),
    ("negative min", GOOD.replace("min_nodes: 1", "min_nodes: -1"), "pools[0].min_nodes", "at least 0"),
    ("duplicate pools", GOOD + GOOD.split("pools:\n")[1], "pools", "unique"),
    ("no pools", "name: good\npools: []\n", "pools", "at least one"),
    ("reserved label", GOOD + "    labels: {rayfleet.io/pool: x}\n", "pools[0].labels", "reserved"),
    ("wrong provider block", GOOD + "    provider: {aws: {instance_type: p5.48xlarge, ami: ami-0123456789abcdef0}}\n",
     "provider.aws", "fleet's provider is local"),
    ("tiny object store", GOOD + "    provider: {local: {object_store_memory: 1Mi}}\n",
     "pools[0].provider.local.object_store_memory", "at least 80Mi"),
    ("bad head address", GOOD + "head: {address: 'nowhere'}\n", "head.address", "host:port"),
    ("string for a number", GOOD.replace("max_nodes: 4", "max_nodes: four"), "pools[0].max_nodes", "integer"),
    ("s3 as the storage", GOOD + "storage: s3://bucket/x\n", "storage", "checkpoint_storage"),
    ("s3 without a bucket", GOOD + "checkpoint_storage: s3:///x\n", "checkpoint_storage", "s3://BUCKET"),
]


def test_good_spec_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(GOOD)
    spec = load_fleet_spec(path)
    pool = spec.pool("h100")
    assert (spec.provider, spec.head.dashboard_host) == ("local", "127.0.0.1")
    assert (pool.memory, pool.desired, pool.peak_tflops) == (64 * 2**30, 1, 989.0)


def test_examples_in_manifests_are_valid() -> None:
    examples = sorted((ROOT / "manifests" / "examples").glob("*fleet*.yaml"))
    assert examples
    for path in examples:
        assert isinstance(load_fleet_spec(path), FleetSpec)


@pytest.mark.parametrize("what,text,field,fix", BAD, ids=[case[0] for case in BAD])
def test_bad_spec_message_names_file_field_and_fix(tmp_path: Path, what: str, text: str, field: str,
                                                   fix: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    with pytest.raises(BadInput) as caught:
        load_fleet_spec(path)
    message = str(caught.value)
    assert str(path) in message and field in message and fix in message, message


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file"):
        load_fleet_spec(tmp_path / "absent.yaml")


@pytest.mark.parametrize("value,expected", [("64Gi", 64 * 2**30), ("512M", 512 * 10**6), (1024, 1024),
                                            ("1.5Gi", int(1.5 * 2**30)), ("200Mi", 200 * 2**20),
                                            ("1e9", 10**9), ("2E3", 2000), ("512m", 1), ("1500m", 2),
                                            ("128k", 128_000), ("0.5Ki", 512)])
def test_sizes_parse_like_kubernetes_quantities(value: object, expected: int) -> None:
    # as apimachinery's resource.Quantity: "m" is milli (rounded up to a whole byte), "e" an exponent
    assert parse_bytes(value) == expected


def test_a_bad_size_is_named_once_in_the_documented_form(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(GOOD.replace("64Gi", "lots"))
    with pytest.raises(BadInput) as caught:
        load_fleet_spec(path)
    assert str(caught.value) == (f"{path}: pools[0].memory: got 'lots': expected a size such as 64Gi, 512Mi, 1e9 "
                                 "or a number of bytes (a Kubernetes quantity)")


@pytest.mark.parametrize("value", ["64GiB", "64 Gi", "ten", "1Zi", "-1Gi", "", "64gi", True])
def test_sizes_kubernetes_refuses_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="64Gi"):
        parse_bytes(value)


def test_the_schema_accepts_exactly_the_sizes_the_spec_accepts() -> None:
    import jsonschema

    schema = {"$defs": FleetSpec.model_json_schema()["$defs"], "$ref": "#/$defs/PoolSpec"}
    for good in ("64Gi", "512M", "1e9", "512m", 2**30):
        jsonschema.validate({"name": "p", "memory": good}, schema)
    for bad in ("64GiB", "64 Gi", "1Zi"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"name": "p", "memory": bad}, schema)


def test_cli_refuses_bad_specs_with_exit_2_and_starts_nothing(tmp_path: Path) -> None:
    """Through the real CLI, as a user: each bad spec exits 2 with one message, nothing starts."""
    home = tmp_path / "home"
    for what, text, field, fix in BAD[:12]:
        path = tmp_path / f"{what.replace(' ', '-')}.yaml"
        path.write_text(text)
        result = rayfleet("up", "-f", str(path), home=home, timeout=60)
        assert result.returncode == 2, (what, result.stdout, result.stderr)
        assert str(path.name) in result.stderr and fix in result.stderr.replace("\n", " "), (what, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (home / "fleets").exists()  # no fleet folder, no token, no head record
    assert ray_daemon_pids(home) == set()


def test_a_ray_temp_folder_squatted_by_another_user_is_refused_and_nothing_starts(tmp_path: Path) -> None:
    """Ray's temp folder has a predictable name in /tmp (socket paths must stay short): one that
    another user made first, or a link in its place, is refused before anything starts."""
    import os

    from rayfleet.cluster.head.fleetdir import FleetDir

    home = tmp_path / "home"
    path = tmp_path / "fleet.yaml"
    path.write_text(GOOD)
    root = FleetDir("good", home).temp_root
    for squat in ("folder", "link"):
        if squat == "folder":
            root.mkdir(mode=0o777)
            os.chown(root, 65534, 65534)  # nobody's (the tests run as root, as CI does)
        else:
            root.symlink_to(tmp_path)
        try:
            result = rayfleet("up", "-f", str(path), home=home, timeout=60)
            assert result.returncode == 2, (squat, result.stdout, result.stderr)
            assert str(root) in result.stderr and "not a folder owned by you" in result.stderr, result.stderr
            assert ray_daemon_pids(home) == set()
        finally:
            root.rmdir() if squat == "folder" else root.unlink()


def test_cli_schema_prints_the_json_schema() -> None:
    import json

    result = rayfleet("schema", timeout=60)
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "pools" in schema["properties"] and "PoolSpec" in schema["$defs"]


def test_every_example_and_the_tests_specs_validate_against_the_exported_schema(tmp_path: Path) -> None:
    """`rayfleet schema` is what editors and CI validate against: every shipped example, and specs
    written the ways the tests write them (sizes as strings with suffixes and as bytes), pass it;
    a spec the product refuses for a size's type fails it too."""
    import json

    import jsonschema
    import yaml

    result = rayfleet("schema", home=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    validator = jsonschema.Draft202012Validator(json.loads(result.stdout))
    specs = {p.name: yaml.safe_load(p.read_text()) for p in (ROOT / "manifests" / "examples").glob("*fleet*.yaml")}
    specs["bytes and suffixes"] = {"name": "t", "pools": [
        {"name": "a", "memory": "8Gi", "gpus_per_node": 8, "accelerator": "H100"},
        {"name": "b", "memory": 17179869184}, {"name": "c", "memory": "512Mi"}, {"name": "d", "memory": "2G"}]}
    assert len(specs) == 4
    for name, data in specs.items():
        FleetSpec.model_validate(data)  # the product accepts it ...
        assert [e.message for e in validator.iter_errors(data)] == [], name  # ... and so does the schema
    bad = {"name": "t", "pools": [{"name": "a", "memory": "lots"}]}
    assert list(validator.iter_errors(bad))
    with pytest.raises(ValueError):
        FleetSpec.model_validate(bad)
