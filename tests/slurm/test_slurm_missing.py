"""A `kind: slurm` host whose login node has no Slurm command on the agent's PATH: a host error
that says so, and runs meant for it wait in cvtui's queue. Needs only a real sshd."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import pytest
import yaml
from support import running, wait_for

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine
from cvtui.inventory import load_inventory
from cvtui.lab import SshServer, generate_key, known_hosts_line
from cvtui.submit import prepare_runs, submit
from slurm.workload import write_config

pytestmark = pytest.mark.sshd


async def test_no_slurm_on_the_login_node_is_a_host_error(tmp_path: Path) -> None:
    # The agent's python runs with a PATH that has a shell and python, no Slurm command.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to("/bin/sh")
    python = bin_dir / "python3"
    python.write_text(f'#!/bin/sh\nPATH={bin_dir} exec {os.path.realpath(sys.executable)} "$@"\n')
    python.chmod(0o755)
    key = tmp_path / "key"
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(generate_key(key, "cvtui-test") + "\n")
    server = SshServer("login", tmp_path / "login", authorized)
    server.start()
    try:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(known_hosts_line(server.port, server.host_pub) + "\n")
        inventory_path = tmp_path / "inventory.yaml"
        host = {
            "address": "127.0.0.1",
            "port": server.port,
            "user": getpass.getuser(),
            "identity": str(key),
            "known_hosts": str(known_hosts),
            "kind": "slurm",
            "root": str(tmp_path / "root"),
            "python": str(python),
        }
        inventory_path.write_text(yaml.safe_dump({"hosts": {"cluster": host}}))
        inventory = load_inventory(inventory_path)
        home = tmp_path / "home"
        engine_catalog, catalog = Catalog.open_home(home), Catalog.open_home(home)
        engine = Engine(inventory, engine_catalog)
        async with running(engine.run):
            await engine.wait_answered(20)
            [host_row] = catalog.hosts_report()
            assert (host_row["state"], host_row["reason"]) == ("error", "slurm: sbatch not found")
            [run_id] = submit(catalog, home, prepare_runs(write_config(tmp_path), inventory))
            await wait_for(lambda: (catalog.get_run(run_id) or {}).get("reason"), 10)
        run = catalog.get_run(run_id) or {}
        assert run["state"] == "queued" and run["host"] is None
        assert run["reason"] == "cluster cannot take jobs: slurm: sbatch not found"
        engine_catalog.close()
        catalog.close()
    finally:
        server.kill()
