"""`ambidex setup`, the compose file's one-shot job, against a running deployment.

Invariant: given only explicit targets (admin DSNs, passwords, bootstrap, Connect URL,
connector values; no local stack), it brings a deployment to the local stack's state
from the same sources, and on a deployment already there it changes nothing: no
migration applied, no topic created, no connector re-applied (a re-applied connector
restarts its capture).
"""

from __future__ import annotations

import os
import subprocess
import sys

from ambidex.stack.local import LocalStack


def test_setup_on_a_prepared_deployment_changes_nothing(local_stack: LocalStack) -> None:
    addresses = local_stack.addresses
    values = local_stack.connector_values()
    environment = {
        # no AMBIDEX_STATE_DIR: the command must not need the local stack
        "AMBIDEX_CRM_ADMIN_DSN": addresses.crm_admin_dsn,
        "AMBIDEX_ERP_ADMIN_DSN": addresses.erp_admin_dsn,
        "AMBIDEX_CDC_PASSWORD": local_stack.secrets.cdc_password,
        "AMBIDEX_APP_PASSWORD": local_stack.secrets.app_password,
        "AMBIDEX_KAFKA_BOOTSTRAP": addresses.kafka_bootstrap,
        "AMBIDEX_CONNECT_URL": addresses.connect_url,
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ambidex.cli",
            "setup",
            "--max-replication=1",
            *(f"--connector-value={name}={value}" for name, value in values.items()),
        ],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "crm: 0 migrations applied" in output and "erp: 0 migrations applied" in output
    assert "seed: already loaded" in output
    assert "topics: 0 created" in output
    assert "connect: ambidex-crm unchanged" in output and "ambidex-erp unchanged" in output
    assert "connect: ambidex-crm RUNNING" in output
    for secret in (local_stack.secrets.cdc_password, local_stack.secrets.app_password):
        assert secret not in output
