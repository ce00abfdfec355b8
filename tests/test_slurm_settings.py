"""`kind: slurm` hosts and `resources.slurm` in run configs: parsed with file:line errors, and
the sbatch settings a run gets from both."""

from __future__ import annotations

import pytest

from cvtui.errors import ConfigError, InventoryError
from cvtui.inventory import parse_inventory
from cvtui.run_config import parse_run_config
from cvtui.runspec import RunSpec
from cvtui.slurm_settings import SlurmSettings, job_settings

CLUSTER = """\
hosts:
  gpu-01: {address: 10.0.0.11}
  cluster:
    address: login.cluster
    kind: slurm
    root: /scratch/alice/cvtui
    slurm: {partition: gpu, account: vision, qos: normal, time: 1-00:00:00, gres_type: a100}
"""


def test_a_cluster_is_one_more_host() -> None:
    inventory = parse_inventory(CLUSTER)
    plain, cluster = inventory.hosts
    assert (plain.kind, plain.slurm) == ("ssh", None)
    assert cluster.kind == "slurm"
    assert cluster.slurm == SlurmSettings("gpu", "vision", "normal", "1-00:00:00", "a100")
    assert cluster.root == "/scratch/alice/cvtui"


def test_slurm_values_are_kept_as_written() -> None:
    # YAML 1.1 would read 4:00:00 as the number 14400 (base 60) and 30 as an int.
    inventory = parse_inventory("hosts: {c: {kind: slurm, slurm: {time: 4:00:00, qos: 30}}}")
    assert inventory.hosts[0].slurm == SlurmSettings(time="4:00:00", qos="30")
    bare = parse_inventory("hosts: {c: {kind: slurm}}").hosts[0]
    assert bare.slurm is None


@pytest.mark.parametrize(
    ("text", "where", "phrase"),
    [
        ("hosts: {c: {kind: pbs}}", "1:19", "kind: expected 'ssh' or 'slurm', got 'pbs'"),
        (
            "hosts: {c: {slurm: {partition: gpu}}}",
            "1:13",
            "host 'c': 'slurm' settings need 'kind: slurm' on the host",
        ),
        (
            "hosts: {c: {kind: slurm, slurm: {partitoin: gpu}}}",
            "1:34",
            "unknown key 'partitoin' in slurm (did you mean 'partition'?)",
        ),
        (
            "hosts: {c: {kind: slurm, slurm: {partition: [a, b]}}}",
            "1:45",
            "slurm.partition: expected a value such as gpu or 1-00:00:00, got a list",
        ),
        (
            "hosts: {c: {kind: slurm, slurm: {account: 'my lab'}}}",
            "1:43",
            "slurm.account: 'my lab' has a space",
        ),
        (
            "hosts: {c: {kind: slurm, gpus: [0, 1]}}",
            "1:26",
            "host 'c': 'gpus' does not apply to kind: slurm (Slurm allocates GPUs)",
        ),
        (
            "hosts: {c: {kind: slurm, simulate: {gpus: 2}}}",
            "1:26",
            "'simulate' does not apply to kind: slurm",
        ),
    ],
)
def test_bad_slurm_settings_are_located(text: str, where: str, phrase: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, "lab.yaml")
    message = str(caught.value)
    assert message.startswith(f"lab.yaml:{where}: "), message
    assert phrase in message


def test_a_config_overrides_the_hosts_slurm_settings() -> None:
    [spec] = parse_run_config(
        "name: big\ncommand: python train.py\n"
        "resources: {gpus: 8, host: cluster, slurm: {time: '2-00:00:00', qos: long}}\n"
    )
    assert spec.resources.slurm == {"time": "2-00:00:00", "qos": "long"}
    assert RunSpec.from_json(spec.to_json()) == spec  # kept with the run
    host = SlurmSettings(partition="gpu", time="1-00:00:00")
    settings = job_settings(host, spec.resources.slurm, gpus=8, priority="low", name="big")
    assert settings == {
        "partition": "gpu",
        "time": "2-00:00:00",
        "qos": "long",
        "gres_type": "gpu",
        "gpus": 8,
        "nice": 100,
        "name": "big",
    }
    # Priorities order cvtui's own jobs; none goes below nice 0 (Slurm operators only).
    nices = [
        job_settings(None, {}, gpus=1, priority=p, name="x")["nice"]
        for p in ("urgent", "high", "normal", "low")
    ]
    assert nices == sorted(nices) and nices[0] == 0


def test_a_bad_slurm_key_in_a_config_is_located() -> None:
    with pytest.raises(
        ConfigError, match=r"run.yaml:3:21: unknown key 'partion' in resources.slurm"
    ):
        parse_run_config(
            "name: x\ncommand: python t.py\nresources: {slurm: {partion: gpu}}\n", "run.yaml"
        )
