"""The deployment examples in deploy/ cannot run here (no container runtime, cluster or
systemd): check that they parse and hold what a fleet needs, and verify the systemd unit
where systemd-analyze exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from proxy_addon.config import parse_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_every_example_says_it_is_an_example() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert "EXAMPLE" in path.read_text().upper(), path


def test_compose_fleet_shares_redis_with_aof_one_key_and_one_ca() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--appendfsync always" in redis
    members = [s for name, s in services.items() if name.startswith("authproxy-")]
    assert len(members) >= 2
    for m in members:  # the anchor: one definition, the same secrets for all
        assert m is members[0]
        secrets = {s["source"] for s in m["secrets"]}
        assert {"authproxy_key", "mitmproxy_ca"} <= secrets
        assert "/readyz" in " ".join(m["healthcheck"]["test"])


def test_compose_member_config_is_a_valid_redis_fleet_config() -> None:
    data = yaml.safe_load((DEPLOY / "compose" / "authproxy.yaml").read_text())
    env = {"PROXY_AUTH": "user:a-long-password-1", "REDIS_PASSWORD": "x", "CLIENT_SECRET": "s",
           "SEED_REFRESH_TOKEN": "r"}  # fmt: skip
    cfg = parse_config(data, "compose/authproxy.yaml", env=env)
    assert cfg.store.backend == "redis" and cfg.confdir is not None


def test_kubernetes_sidecar_probes_and_secret(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "authproxy-sidecar.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert {"Secret", "ConfigMap", "Deployment"} <= set(kinds)
    assert {"AUTHPROXY_KEY", "mitmproxy-ca.pem"} <= set(kinds["Secret"]["stringData"])
    config = yaml.safe_load(kinds["ConfigMap"]["data"]["authproxy.yaml"])
    assert config["store"]["ca_certs"]  # mounted in the pod; a stand-in here
    config["store"]["ca_certs"] = str(tmp_path / "ca.crt")
    (tmp_path / "ca.crt").write_text("")
    env = {"REDIS_PASSWORD": "x", "CLIENT_SECRET": "s", "SEED_REFRESH_TOKEN": "r"}
    assert parse_config(config, "authproxy.yaml", env=env).store.backend == "redis"
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    proxy = next(c for c in pod["containers"] if c["name"] == "authproxy")
    assert "/healthz" in " ".join(proxy["livenessProbe"]["exec"]["command"])
    assert "/readyz" in " ".join(proxy["readinessProbe"]["exec"]["command"])


def test_systemd_unit_is_hardened_and_verifies() -> None:
    unit = DEPLOY / "systemd" / "authproxy.service"
    text = unit.read_text()
    for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                      "LoadCredential=store.key:"):  # fmt: skip
        assert directive in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    # It exits 0 on unknown keys and bad values, and says so on stderr.
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
