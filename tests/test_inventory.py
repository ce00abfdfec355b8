"""inventory.yaml parsing, its located errors, path lookup order and live reload."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import platformdirs
import pytest

from cvtui.errors import InventoryError, UnknownHostError
from cvtui.inventory import (
    Host,
    Inventory,
    JumpHop,
    Policy,
    SimulateSpec,
    default_inventory_path,
    load_inventory,
    parse_inventory,
    parse_jump,
    watch_inventory,
)
from cvtui.quantities import parse_duration, parse_size
from cvtui.run_env import RunEnv

GiB = 2**30

FULL = """\
defaults:
  user: researcher
  port: 22
  identity: ~/.ssh/id_ed25519
  python: python3
  root: ~/.cache/cvtui
  leases_dir: /tmp/cvtui-leases
  known_hosts: ~/.ssh/known_hosts
policy: {interval: 2s, stale_after: 10s, disconnected_after: 1m, host_keys: accept-new,
         foreign_processes: share}
hosts:
  gpu-01: {address: 10.0.0.11, tags: [a100], gpus: [0, 1, 2, 3], max_runs: 4}
  gpu-02: {address: gpu-02.lab, user: alice, gpu_order: [3, 2, 1, 0]}
  sim-01:
    address: 127.0.0.1
    port: 2201
    simulate: {gpus: 4, model: "A100-SXM4-80GB", memory: 80GiB}
  plain:
"""


def test_full_inventory_applies_defaults_and_overrides() -> None:
    home = Path.home()
    identity = str(home / ".ssh/id_ed25519")
    known_hosts = str(home / ".ssh/known_hosts")
    common = Host(
        name="template",
        address="template",
        user="researcher",
        port=22,
        identity=identity,
        python="python3",
        root="~/.cache/cvtui",  # remote path: never expanded locally
        leases_dir="/tmp/cvtui-leases",
        known_hosts=known_hosts,
    )
    inventory = parse_inventory(FULL)
    assert inventory == Inventory(
        path="<string>",
        policy=Policy(
            interval_s=2.0,
            stale_after_s=10.0,
            disconnected_after_s=60.0,
            host_keys="accept-new",
            foreign_processes="share",
        ),
        hosts=(
            replace(
                common,
                name="gpu-01",
                address="10.0.0.11",
                tags=("a100",),
                gpus=(0, 1, 2, 3),
                max_runs=4,
            ),
            replace(
                common, name="gpu-02", address="gpu-02.lab", user="alice", gpu_order=(3, 2, 1, 0)
            ),
            replace(
                common,
                name="sim-01",
                address="127.0.0.1",
                port=2201,
                simulate=SimulateSpec(gpus=4, model="A100-SXM4-80GB", memory=80 * GiB),
            ),
            replace(common, name="plain", address="plain"),
        ),
    )
    assert [host.line for host in inventory.hosts] == [12, 13, 14, 18]
    assert inventory.names() == ["gpu-01", "gpu-02", "sim-01", "plain"]
    assert inventory.host("gpu-02").user == "alice"


def test_every_documented_default() -> None:
    inventory = parse_inventory("hosts:\n  solo:\n")
    assert inventory.policy == Policy()
    assert (inventory.policy.interval_s, inventory.policy.stale_after_s) == (1.0, 5.0)
    assert inventory.policy.disconnected_after_s == 30.0
    assert (inventory.policy.host_keys, inventory.policy.foreign_processes) == ("strict", "avoid")
    (host,) = inventory.hosts
    assert host == Host(name="solo")
    assert host.address == "solo"
    assert host.port is None  # unset: ~/.ssh/config decides, else 22
    assert host.jump is None
    assert host.user is None
    assert host.identity is None
    assert host.python == "python3"
    assert host.root == "~/.cache/cvtui"
    assert host.leases_dir == "/tmp/cvtui-leases"
    assert host.known_hosts is None
    assert host.tags == ()
    assert host.gpus is None
    assert host.max_runs is None
    assert host.gpu_order is None
    assert host.simulate is None
    assert host.line == 2


@pytest.mark.parametrize(
    ("spec", "memory"),
    [
        (SimulateSpec(gpus=4), 80 * GiB),
        (SimulateSpec(gpus=2, model="RTX-3090-24GB"), 24 * GiB),
        (SimulateSpec(gpus=1, model="Tesla T4 16GB"), 16 * GiB),
        (SimulateSpec(gpus=1, model="Mystery Accelerator"), 24 * GiB),
        (SimulateSpec(gpus=1, model="A100-SXM4-80GB", memory=40 * GiB), 40 * GiB),
    ],
)
def test_simulated_memory_default_comes_from_the_model_name(
    spec: SimulateSpec, memory: int
) -> None:
    assert spec.memory == memory


def test_simulate_defaults_in_the_file() -> None:
    inventory = parse_inventory("hosts: {sim: {simulate: {gpus: 2}}}")
    assert inventory.host("sim").simulate == SimulateSpec(2, "A100-SXM4-80GB", 80 * GiB)
    inventory = parse_inventory("hosts: {sim: {simulate: {gpus: 2, model: RTX-4090-24GB}}}")
    assert inventory.host("sim").simulate == SimulateSpec(2, "RTX-4090-24GB", 24 * GiB)


def test_a_host_can_unset_an_optional_default() -> None:
    text = "defaults: {user: bob, identity: /k}\nhosts: {a: {user: null, identity: ~}, b: }"
    inventory = parse_inventory(text)
    assert (inventory.host("a").user, inventory.host("a").identity) == (None, None)
    assert (inventory.host("b").user, inventory.host("b").identity) == ("bob", "/k")


def test_anchors_and_merge_keys_share_settings() -> None:
    text = (
        "hosts:\n"
        "  a: &common {port: 2200, tags: [a100], python: python3.11}\n"
        "  b: {<<: *common, port: 2201}\n"
        "  c: *common\n"
    )
    inventory = parse_inventory(text)
    assert [host.port for host in inventory.hosts] == [2200, 2201, 2200]
    assert {host.tags for host in inventory.hosts} == {("a100",)}
    assert inventory.host("b").python == "python3.11"


def test_accepted_odds_and_ends(tmp_path: Path) -> None:
    inventory = parse_inventory("hosts: {a: {max_runs: 0, gpus: [], tags: []}, 10.0.0.7: }")
    assert (inventory.host("a").max_runs, inventory.host("a").gpus) == (0, ())  # a drained host
    assert inventory.host("10.0.0.7").address == "10.0.0.7"
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfhosts: {a: {user: '1000'}}\n")  # BOM from a Windows editor
    assert load_inventory(path).host("a").user == "1000"


def test_unknown_host_names_the_known_ones() -> None:
    inventory = parse_inventory("hosts: {a: , b: }")
    with pytest.raises(UnknownHostError, match=r"unknown host 'zz' \(inventory hosts: a, b\)"):
        inventory.host("zz")


def test_settings_key_changes_only_with_connection_settings() -> None:
    host = Host(name="a", address="10.0.0.1", tags=("x",), max_runs=2, line=3)
    same_connection = Host(name="a", address="10.0.0.1", tags=("y",), max_runs=None, line=9)
    assert host.settings_key() == same_connection.settings_key()
    assert host != same_connection
    assert Host(name="a", line=1) == Host(name="a", line=7)  # moving a host is not a change
    for changed in (
        replace(host, port=2222),
        replace(host, user="bob"),
        replace(host, identity="/k"),
        replace(host, python="python3.12"),
        replace(host, root="/data/cvtui"),
        replace(host, leases_dir="/run/leases"),
        replace(host, known_hosts="/kh"),
        replace(host, simulate=SimulateSpec(2)),
        replace(host, address="10.0.0.2"),
    ):
        assert changed.settings_key() != host.settings_key(), changed


def L(*lines: str) -> str:
    return "\n".join(lines) + "\n"


MALFORMED = [  # (id, text, line:column, phrase of the message)
    (
        "port-not-int",
        L("hosts:", "  a: {port: abc}"),
        "2:13",
        "port: expected an integer 1-65535, got 'abc'",
    ),
    (
        "port-range",
        L("hosts:", "  a: {port: 70000}"),
        "2:13",
        "port: expected an integer 1-65535, got 70000",
    ),
    (
        "duplicate-host",
        L("hosts:", "  a: {}", "  b: {}", "  a: {port: 2}"),
        "4:3",
        "duplicate host 'a' (first on line 2)",
    ),
    (
        "duplicate-key",
        L("hosts:", "  a:", "    port: 1", "    port: 2"),
        "4:5",
        "duplicate key 'port' (first on line 3)",
    ),
    (
        "duplicate-top-key",
        L("hosts: {a: }", "policy: {}", "hosts: {b: }"),
        "3:1",
        "duplicate key 'hosts'",
    ),
    (
        "unknown-host-key",
        L("hosts:", "  a: {adress: x}"),
        "2:7",
        "unknown key 'adress' in host 'a' (did you mean 'address'?); allowed: address, user",
    ),
    (
        "unknown-top-key",
        L("host:", "  a: {}"),
        "1:1",
        "unknown key 'host' in the top level (did you mean 'hosts'?); "
        "allowed: defaults, policy, hosts, notify",
    ),
    (
        "unknown-defaults-key",
        L("defaults: {tags: [x]}", "hosts: {a: }"),
        "1:12",
        "unknown key 'tags' in defaults; allowed: user, port",
    ),
    (
        "unknown-policy-key",
        L("policy: {intervall: 1s}", "hosts: {a: }"),
        "1:10",
        "unknown key 'intervall' in policy (did you mean 'interval'?)",
    ),
    (
        "unknown-simulate-key",
        L("hosts:", "  a: {simulate: {gpus: 1, vram: 8GB}}"),
        "2:27",
        "unknown key 'vram' in simulate; allowed: gpus, model, memory",
    ),
    (
        "bad-duration",
        L("policy: {interval: soon}", "hosts: {a: }"),
        "1:20",
        "policy.interval: expected a duration such as 500ms, 1s",
    ),
    (
        "zero-duration",
        L("policy: {stale_after: 0s}", "hosts: {a: }"),
        "1:23",
        "policy.stale_after: a duration must be greater than 0",
    ),
    (
        "stale-before-interval",
        L("policy: {interval: 10s}", "hosts: {a: }"),
        "1:20",
        "policy.stale_after (5s) must be longer than policy.interval (10s)",
    ),
    (
        "disconnected-before-stale",
        L("policy: {disconnected_after: 3s}", "hosts: {a: }"),
        "1:30",
        "policy.disconnected_after (3s) must be longer than policy.stale_after (5s)",
    ),
    (
        "bad-size",
        L("hosts:", "  a: {simulate: {gpus: 1, memory: 8 bananas}}"),
        "2:35",
        "simulate.memory: expected a size such as 512, 10GB or 10GiB",
    ),
    (
        "bad-host-keys",
        L("policy: {host_keys: yes}", "hosts: {a: }"),
        "1:21",
        "policy.host_keys: expected 'strict' or 'accept-new', got yes",
    ),
    (
        "bad-foreign",
        L("policy: {foreign_processes: kill}", "hosts: {a: }"),
        "1:29",
        "policy.foreign_processes: expected 'avoid' or 'share', got 'kill'",
    ),
    ("empty-hosts", L("hosts: {}"), "1:1", "hosts: no hosts listed"),
    ("null-hosts", L("defaults: {user: x}", "hosts:"), "2:1", "hosts: no hosts listed"),
    ("missing-hosts", L("# a comment", "defaults: {user: x}"), "2:1", "missing 'hosts'"),
    ("merged-nothing", L("hosts: {<<: {}}"), "1:1", "hosts: no hosts listed"),
    ("hosts-list", L("hosts: [a, b]"), "1:8", "hosts: expected a mapping, got a list"),
    (
        "bad-host-name",
        L("hosts:", "  gpu 01: {}"),
        "2:3",
        "invalid host name 'gpu 01': use letters, digits",
    ),
    ("host-name-dash", L("hosts:", "  -gpu: {}"), "2:3", "invalid host name '-gpu'"),
    (
        "yaml-syntax",
        L("hosts:", "  a: {port: 22", "  b: {}"),
        "3:4",
        "invalid YAML: expected ',' or '}'",
    ),
    (
        "yaml-alias",
        L("hosts:", "  a: {user: *nobody}"),
        "2:13",
        "invalid YAML: found undefined alias 'nobody'",
    ),
    (
        "two-documents",
        L("hosts: {a: }", "---", "hosts: {b: }"),
        "2:1",
        "expected a single document in the stream",
    ),
    (
        "top-list",
        L("- gpu-01", "- gpu-02"),
        "1:1",
        "expected a mapping with a 'hosts' section at the top, got a list",
    ),
    (
        "top-scalar",
        L("just text"),
        "1:1",
        "expected a mapping with a 'hosts' section at the top, got 'just text'",
    ),
    ("empty", "", "1:1", "the inventory is empty"),
    ("comments-only", L("# nothing here yet", ""), "1:1", "the inventory is empty"),
    (
        "gpus-scalar",
        L("hosts:", "  a: {gpus: 0}"),
        "2:13",
        "gpus: expected a list like [0, 1] (GPU indexes), got 0",
    ),
    (
        "gpus-negative",
        L("hosts:", "  a: {gpus: [0, -1]}"),
        "2:17",
        "gpus: expected GPU indexes (integers >= 0), got -1",
    ),
    (
        "gpus-text",
        L("hosts:", "  a: {gpus: [0, x]}"),
        "2:17",
        "gpus: expected GPU indexes (integers >= 0), got 'x'",
    ),
    (
        "gpu-order-twice",
        L("hosts:", "  a: {gpu_order: [1, 0, 1]}"),
        "2:25",
        "gpu_order: GPU 1 is listed twice",
    ),
    (
        "simulate-zero",
        L("hosts:", "  a: {simulate: {gpus: 0}}"),
        "2:24",
        "simulate.gpus: expected an integer 1-64, got 0",
    ),
    (
        "simulate-too-many",
        L("hosts:", "  a: {simulate: {gpus: 65}}"),
        "2:24",
        "simulate.gpus: expected an integer 1-64, got 65",
    ),
    (
        "simulate-no-gpus",
        L("hosts:", "  a: {simulate: {model: T4}}"),
        "2:17",
        "simulate: 'gpus' is required",
    ),
    (
        "gpus-beyond-simulated",
        L("hosts:", "  a: {simulate: {gpus: 2}, gpus: [0, 2]}"),
        "2:38",
        "gpus: GPU 2 does not exist; simulate has 2 GPUs (0-1)",
    ),
    (
        "negative-max-runs",
        L("hosts:", "  a: {max_runs: -1}"),
        "2:17",
        "max_runs: expected an integer >= 0, got -1",
    ),
    (
        "user-number",
        L("hosts:", "  a: {user: 1000}"),
        "2:13",
        "user: expected a non-empty string, got 1000 (quote it",
    ),
    (
        "empty-python",
        L("hosts:", "  a: {python: ''}"),
        "2:15",
        "python: expected a non-empty string, got ''",
    ),
    (
        "tags-scalar",
        L("hosts:", "  a: {tags: a100}"),
        "2:13",
        "tags: expected a list like [a100], got 'a100'",
    ),
    ("host-scalar", L("hosts:", "  a: text"), "2:6", "host 'a': expected a mapping, got 'text'"),
    ("python-tag", L("hosts:", "  a: !!python/object:os.system {}"), "2:6", "unsupported tag"),
    (
        "custom-tag",
        L("hosts:", "  a: {user: !vault x}"),
        "2:13",
        "could not determine a constructor for the tag '!vault'",
    ),
    (
        "control-character",
        "hosts: {a: \x01}\n",
        "1:12",
        "invalid YAML: unacceptable character #x0001",
    ),
    (
        "run-env-unknown-key",
        L("hosts:", "  a: {run_env: {setpu: x}}"),
        "2:17",
        "unknown key 'setpu' in run_env (did you mean 'setup'?)",
    ),
    (
        "run-env-relative-path",
        L("hosts:", "  a: {run_env: {path: [bin]}}"),
        "2:24",
        "run_env.path: 'bin' is not an absolute path (or one under ~/)",
    ),
    (
        "link-outside",
        L("hosts:", "  a: {links: {../up: /data}}"),
        "2:15",
        "links: '../up' must be a relative name in the run's work dir",
    ),
    (
        "link-relative-target",
        L("hosts:", "  a: {links: {data: datasets}}"),
        "2:21",
        "links.data: 'datasets' is not an absolute host path",
    ),
    (
        "disk-usage-relative",
        L("hosts:", "  a: {disk_usage: [/home, data]}"),
        "2:27",
        "disk_usage: 'data' is not an absolute path (/home)",
    ),
    (
        "disk-usage-twice",
        L("defaults: {disk_usage: [/home, /home/]}", "hosts: {a: }"),
        "1:32",
        "disk_usage: '/home' is listed twice",
    ),
    (
        "disk-usage-root",
        L("hosts:", "  a: {disk_usage: [/]}"),
        "2:20",
        "disk_usage: '/' would size the whole machine",
    ),
    (
        "disk-usage-not-a-list",
        L("hosts:", "  a: {disk_usage: /home}"),
        "2:19",
        "disk_usage",
    ),
    (
        "max-grid",
        L("policy: {max_grid: 0}", "hosts: {a: }"),
        "1:20",
        "policy.max_grid: expected an integer >= 1, got 0",
    ),
]


@pytest.mark.parametrize(
    ("text", "where", "phrase"), [pytest.param(*row[1:], id=row[0]) for row in MALFORMED]
)
def test_malformed_inventory_is_located(text: str, where: str, phrase: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, "lab.yaml")
    message = str(caught.value)
    assert message.startswith(f"lab.yaml:{where}: "), message
    assert phrase in message
    assert "\n" not in message
    line, column = (int(part) for part in where.split(":"))
    assert (caught.value.path, caught.value.line, caught.value.column) == ("lab.yaml", line, column)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1, 1.0),
        (2.5, 2.5),
        ("500ms", 0.5),
        ("1s", 1.0),
        ("2.5s", 2.5),
        (".5s", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("3", 3.0),
        (" 10 s ", 10.0),
        ("1H", 3600.0),
        ("30d", 30 * 86400.0),  # history retention is written in days, weeks, years
        ("2w", 14 * 86400.0),
        ("2y", 730 * 86400.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (0, "greater than 0"),
        (-1, "greater than 0"),
        ("0s", "greater than 0"),
        ("0ms", "greater than 0"),
        ("-1s", "expected a duration"),
        ("abc", "expected a duration"),
        ("1dd", "expected a duration"),
        ("1 sec", "expected a duration"),
        ("1.5.2s", "expected a duration"),
        ("", "expected a duration"),
        (None, "expected a duration"),
        (True, "expected a duration"),
        ([1], "expected a duration"),
        (float("nan"), "expected a duration"),
        (float("inf"), "expected a duration"),
        (10**400, "expected a duration"),
    ],
)
def test_parse_duration_rejects(value: object, phrase: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert phrase in str(caught.value)
    assert repr(value)[:20] in str(caught.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("64B", 64),
        ("10GB", 10 * 10**9),
        ("10GiB", 10 * 2**30),
        ("10gib", 10 * 2**30),
        ("10Gb", 10 * 10**9),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("2MB", 2 * 10**6),
        ("2MiB", 2 * 2**20),
        ("1TB", 10**12),
        ("1TiB", 2**40),
        ("1.5GiB", 3 * 2**29),
        (" 80 GiB ", 80 * 2**30),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (-1, "must not be negative"),
        ("-1GB", "expected a size"),
        ("10XB", "expected a size"),
        ("10 G", "expected a size"),
        ("GB", "expected a size"),
        ("", "expected a size"),
        ("1.5", "not a whole number of bytes"),
        (1.5, "expected a size"),
        (True, "expected a size"),
        (None, "expected a size"),
    ],
)
def test_parse_size_rejects(value: object, phrase: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert phrase in str(caught.value)


# --- files and where they are found ---


def test_load_inventory_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts:\n  a: {identity: keys/lab_ed25519, known_hosts: /etc/kh}\n")
    inventory = load_inventory(path)
    assert inventory.path == str(path)
    # A relative key path is relative to the inventory file, not to the current directory.
    assert inventory.host("a").identity == str(tmp_path / "keys/lab_ed25519")
    assert inventory.host("a").known_hosts == "/etc/kh"

    path.write_text("hosts:\n  a: {port: abc}\n")
    with pytest.raises(InventoryError, match=rf"^{path}:2:13: port: expected an integer"):
        load_inventory(str(path))


def test_load_inventory_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "lab.yaml").write_text("hosts: {a: {identity: ~/id}}\n")
    inventory = load_inventory("~/lab.yaml")
    assert inventory.path == str(tmp_path / "lab.yaml")
    assert inventory.host("a").identity == str(tmp_path / "id")


def test_load_inventory_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InventoryError) as caught:
        load_inventory(missing)
    assert str(caught.value).startswith(f"{missing}: no such file")
    assert (caught.value.line, caught.value.column) == (None, None)

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"hosts: {a: {user: \xff}}\n")
    with pytest.raises(InventoryError, match=r"not UTF-8 text \(byte 18\)"):
        load_inventory(binary)

    with pytest.raises(InventoryError, match="is a directory"):
        load_inventory(tmp_path)


def test_default_inventory_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("CVTUI_INVENTORY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    config = Path(platformdirs.user_config_dir("cvtui")) / "inventory.yaml"
    if sys.platform.startswith("linux"):
        assert config == tmp_path / "xdg/cvtui/inventory.yaml"
    assert default_inventory_path() == config

    (work / "inventory.yaml").write_text("hosts: {a: }\n")
    assert default_inventory_path() == work / "inventory.yaml"  # ./inventory.yaml beats config

    monkeypatch.setenv("CVTUI_INVENTORY", str(tmp_path / "env.yaml"))
    assert default_inventory_path() == tmp_path / "env.yaml"  # the env beats ./inventory.yaml

    assert default_inventory_path("other.yaml") == Path("other.yaml")  # explicit beats all
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_inventory_path("~/lab.yaml") == tmp_path / "lab.yaml"


def test_a_directory_named_inventory_yaml_is_not_the_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "inventory.yaml").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CVTUI_INVENTORY", str(tmp_path / "env.yaml"))
    assert default_inventory_path() == tmp_path / "env.yaml"


# --- live reload ---


class Recorder:
    """Collects what watch_inventory reports, in order."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[Inventory | InventoryError] = asyncio.Queue()

    def on_change(self, inventory: Inventory) -> None:
        self.events.put_nowait(inventory)

    def on_error(self, error: InventoryError) -> None:
        self.events.put_nowait(error)

    async def next(self, timeout_s: float = 3.0) -> Inventory | InventoryError:
        return await asyncio.wait_for(self.events.get(), timeout_s)

    async def next_inventory(self) -> Inventory:
        event = await self.next()
        assert isinstance(event, Inventory), event
        return event

    async def next_error(self) -> InventoryError:
        event = await self.next()
        assert isinstance(event, InventoryError), event
        return event


async def start_watching(path: Path, recorder: Recorder, stop: asyncio.Event) -> asyncio.Task[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(
        watch_inventory(path, recorder.on_change, recorder.on_error, stop, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 5)
    return task


async def test_watch_reports_edits_and_rejects_invalid_ones(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts:\n  gpu-01: {}\n")
    recorder, stop = Recorder(), asyncio.Event()
    task = await start_watching(path, recorder, stop)

    path.write_text("hosts:\n  gpu-01: {}\n  gpu-02: {port: 2202}\n")
    inventory = await recorder.next_inventory()
    assert inventory.names() == ["gpu-01", "gpu-02"]
    assert inventory.host("gpu-02").port == 2202
    assert inventory.path == str(path)

    path.write_text("hosts:\n  gpu-01: {}\n  gpu-02: {port: 2202}\n")  # same text: not reported
    path.write_text("hosts:\n  gpu-01: {}\n  gpu-02: {port: abc}\n")
    error = await recorder.next_error()  # and no on_change before it
    assert str(error).startswith(f"{path}:3:18: port: expected an integer 1-65535")

    path.write_text("hosts:\n  gpu-01: {}\n  gpu-02: {port: 2203}\n")
    fixed = await recorder.next_inventory()
    assert fixed.host("gpu-02").port == 2203

    stop.set()
    await asyncio.wait_for(task, 5)
    assert recorder.events.empty()


async def test_watch_sees_replacement_by_rename_and_deletion(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts: {gpu-01: }\n")
    (tmp_path / "unrelated.yaml").write_text("x")
    recorder, stop = Recorder(), asyncio.Event()
    task = await start_watching(path, recorder, stop)

    (tmp_path / "unrelated.yaml").write_text("not watched")
    staged = tmp_path / ".inventory.yaml.swp"
    staged.write_text("hosts: {gpu-01: , gpu-03: }\n")
    staged.replace(path)  # how vim and most editors save
    assert (await recorder.next_inventory()).names() == ["gpu-01", "gpu-03"]

    path.unlink()
    assert "no such file" in str(await recorder.next_error())
    path.write_text("hosts: {gpu-01: , gpu-03: }\n")
    assert (await recorder.next_inventory()).names() == ["gpu-01", "gpu-03"]

    stop.set()
    await asyncio.wait_for(task, 5)
    assert recorder.events.empty()


async def test_watch_follows_a_symlinked_inventory(tmp_path: Path) -> None:
    (tmp_path / "dotfiles").mkdir()
    real = tmp_path / "dotfiles/inventory.yaml"
    real.write_text("hosts: {a: }\n")
    link = tmp_path / "inventory.yaml"
    link.symlink_to(real)
    recorder, stop = Recorder(), asyncio.Event()
    task = await start_watching(link, recorder, stop)

    real.write_text("hosts: {a: , b: }\n")
    assert (await recorder.next_inventory()).names() == ["a", "b"]
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_watch_returns_at_once_when_already_stopped(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts: {a: }\n")
    stop = asyncio.Event()
    stop.set()
    recorder = Recorder()
    await asyncio.wait_for(watch_inventory(path, recorder.on_change, recorder.on_error, stop), 1)
    assert recorder.events.empty()


async def test_cancelling_the_watch_leaves_the_callers_stop_event_alone(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts: {a: }\n")
    recorder, stop = Recorder(), asyncio.Event()
    task = await start_watching(path, recorder, stop)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not stop.is_set()  # the engine shares this event with its other tasks


async def test_watch_needs_an_existing_directory(tmp_path: Path) -> None:
    recorder = Recorder()
    missing = tmp_path / "nowhere" / "inventory.yaml"
    with pytest.raises(InventoryError, match="cannot watch: no such directory"):
        await watch_inventory(missing, recorder.on_change, recorder.on_error)
    assert not missing.parent.exists()


def test_disk_usage_paths_from_the_defaults_or_the_host() -> None:
    inventory = parse_inventory(
        L(
            "defaults: {disk_usage: [/home, /data/]}",
            "hosts:",
            "  a: {disk_usage: [/scratch]}",
            "  b:",
            "  c: {disk_usage: []}",
            "  d: {disk_usage: null}",
        )
    )
    a, b, c, d = inventory.hosts
    assert a.disk_usage == ("/scratch",)  # a host's list replaces the defaults'
    assert b.disk_usage == ("/home", "/data")  # normalised
    assert c.disk_usage == ()
    assert d.disk_usage == ()  # null: none, as if not set
    assert parse_inventory(L("hosts: {a: }")).hosts[0].disk_usage == ()


def test_run_env_and_links_per_host_over_the_defaults() -> None:
    inventory = parse_inventory(
        L(
            "defaults:",
            "  run_env: {setup: source ~/venvs/cv/bin/activate, path: [~/bin]}",
            "  links: {data: /mnt/datasets, cache: /scratch/cache}",
            "hosts:",
            "  a: {links: {data: /ssd/datasets}}",
            "  b:",
            "    run_env:",
            "      setup: [module load cuda/12.1, conda activate cv]",
            "      python: ~/miniconda3/envs/cv/bin/python",
        )
    )
    a, b = inventory.hosts
    assert a.run_env == RunEnv(setup=("source ~/venvs/cv/bin/activate",), path=("~/bin",))
    assert dict(a.links) == {"data": "/ssd/datasets", "cache": "/scratch/cache"}  # merged
    assert b.run_env == RunEnv(  # a host's run_env replaces the defaults' whole
        setup=("module load cuda/12.1", "conda activate cv"),
        python="~/miniconda3/envs/cv/bin/python",
    )
    assert dict(b.links) == {"data": "/mnt/datasets", "cache": "/scratch/cache"}
    config = RunEnv(setup=("export A=1",), path=("/opt/x",), python=None)
    assert a.run_env.plus(config) == RunEnv(
        setup=("source ~/venvs/cv/bin/activate", "export A=1"), path=("/opt/x", "~/bin")
    )


FIVE_ERRORS = L(
    "defaults: {user: 7}",  # 1: user must be text
    "policy: {interval: soon}",  # 2: not a duration
    "hosts:",
    "  a: {port: 0, jump: 'no way'}",  # 4: two errors on one line, in column order
    "  b: {tagz: [x]}",  # 5: unknown key
)


def test_every_error_of_a_file_is_reported_in_file_order() -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(FIVE_ERRORS, "lab.yaml")
    errors = caught.value.errors  # type: ignore[attr-defined]
    where = [(e.line, e.column) for e in errors]
    assert where == [(1, 18), (2, 20), (4, 13), (4, 22), (5, 7)]
    lines = str(caught.value).splitlines()
    assert lines[0] == "lab.yaml: 5 errors, in file order:"
    assert [line.strip() for line in lines[1:]] == [str(e) for e in errors]
    assert "user: expected a non-empty string" in lines[1]
    assert "policy.interval: expected a duration" in lines[2]
    assert "port: expected an integer 1-65535, got 0" in lines[3]
    assert "jump: expected [user@]host[:port]" in lines[4]
    assert "unknown key 'tagz' in host 'b' (did you mean 'tags'?)" in lines[5]
    # Located like its first error, for callers that read one place.
    assert (caught.value.path, caught.value.line, caught.value.column) == ("lab.yaml", 1, 18)


@pytest.mark.parametrize(
    ("text", "hops"),
    [
        ("bastion", [JumpHop("bastion")]),
        ("alice@bastion:2222,gw", [JumpHop("bastion", "alice", 2222), JumpHop("gw")]),
        ("ssh://bob@[fe80::1]:22", [JumpHop("fe80::1", "bob", 22)]),
        ("none", []),
    ],
)
def test_jump_lists_read_as_openssh_writes_them(text: str, hops: list[JumpHop]) -> None:
    assert list(parse_jump(text)) == hops
    inventory = parse_inventory(f"hosts:\n  a: {{jump: '{text}'}}\n")
    assert inventory.host("a").jump == text


@pytest.mark.parametrize("text", ["a b", "host:99999", "@host", "a,,b", "user@"])
def test_bad_jump_lists_are_located(text: str) -> None:
    with pytest.raises(InventoryError, match=r"^<string>:2:13: jump: expected \[user@\]host"):
        parse_inventory(f"hosts:\n  a: {{jump: '{text}'}}\n")


def test_policy_history_and_idle_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "policy:\n"
        "  idle_util: 2.5\n"
        "  idle_after: 10m\n"
        "  history:\n"
        "    - {every: sample, keep: 2h}\n"
        "    - {every: 1m, keep: 90d}\n"
        "hosts:\n  a: {}\n"
    )
    policy = load_inventory(path).policy
    assert policy.history == ((0.0, 7200.0), (60.0, 90 * 86400.0))
    assert (policy.idle_util, policy.idle_after_s) == (2.5, 600.0)
    # Neither needs the hosts reconnected when edited.
    assert policy.session_key() == Policy().session_key()


@pytest.mark.parametrize(
    ("history", "where", "problem"),
    [
        ("[{every: 10s, keep: 1d}]", "3:20", "the first tier must keep every sample"),
        ("[{every: sample, keep: 1d}, {every: 1m, keep: 1h}]", "3:47", "must keep longer"),
        (
            "[{every: sample, keep: 1h}, {every: 10s, keep: 1d}, {every: 15s, keep: 2d}]",
            "3:71",
            "a multiple of the one before",
        ),
        ("[{every: sample}]", "3:20", "'keep' is required"),
        ("[{every: sample, keep: 1h, step: 2}]", "3:46", "unknown key 'step'"),
        ("{every: sample}", "3:19", "expected a list like"),
        ("[{every: often, keep: 1h}]", "3:28", "expected a duration"),
    ],
)
def test_policy_history_errors_name_the_place(
    tmp_path: Path, history: str, where: str, problem: str
) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(f"hosts:\n  a: {{}}\npolicy: {{history: {history}}}\n")
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert f"inventory.yaml:{where}" in str(caught.value)
    assert problem in str(caught.value)
