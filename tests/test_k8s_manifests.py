"""The Kubernetes manifests (deploy/k8s/) and the Dockerfile agree with the node program:
its options parse, the discovery spec matches the Service, the ports match the name and
FABRIC_PUB_PORT, the cookie comes from the Secret, readiness pings the node itself."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fabric.config import NodeConfig
from fabric.console import node_options, parse_args
from fabric.discovery import DnsConfig, parse_specs
from fabric.types import parse_node_name

yaml = pytest.importorskip("yaml", reason="PyYAML (a test extra) is not installed")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
# What the downward API would give one pod.
POD = {"POD_NAME": "fabric-0", "POD_NAMESPACE": "prod", "POD_IP": "10.1.2.3"}


def manifests() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def expand(text: str, pattern: str) -> str:
    return re.sub(pattern, lambda m: POD[m.group(1)], text)


def container(workload: dict[str, Any]) -> dict[str, Any]:
    [c] = workload["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def literal_env(c: dict[str, Any]) -> dict[str, str]:
    """The container's plain env values, with $(VAR) expanded as Kubernetes does."""
    return {e["name"]: expand(e["value"], r"\$\((\w+)\)") for e in c["env"] if "value" in e}


@pytest.mark.parametrize("kind, record", [("StatefulSet", "srv"), ("Deployment", "a")])
def test_workload_agrees_with_the_node_program(kind: str, record: str) -> None:
    docs = manifests()
    service, secret, workload = docs["Service"], docs["Secret"], docs[kind]
    c = container(workload)
    env = literal_env(c)
    args = parse_args([expand(a, r"\$\((\w+)\)") for a in c["args"]])
    assert args.no_repl
    name = parse_node_name(args.name)
    config = NodeConfig.from_env(env, **node_options(args))
    # Discovery: the spec names this Service, in the pod's namespace, and these pods.
    [dns] = parse_specs(config.discovery)
    assert isinstance(dns, DnsConfig) and dns.record == record
    assert dns.basename == name.name
    svc = service["metadata"]["name"]
    ports = {p["name"]: p for p in c["ports"]}
    if record == "srv":
        assert workload["spec"]["serviceName"] == svc
        assert dns.name == f"_dist._tcp.{svc}.{POD['POD_NAMESPACE']}.svc.cluster.local"
        # The node's own name is its SRV target: the pod's DNS name under the Service.
        assert name.host == f"{POD['POD_NAME']}.{svc}.{POD['POD_NAMESPACE']}.svc.cluster.local"
        assert config.bind_host == "0.0.0.0"
    else:
        assert dns.name == f"{svc}.{POD['POD_NAMESPACE']}.svc.cluster.local"
        assert name.host == POD["POD_IP"] and dns.port == name.port
    # Both ports in the container, matching the name and FABRIC_PUB_PORT, and the Service.
    assert ports["dist"]["containerPort"] == name.port
    assert ports["pub"]["containerPort"] == config.pub_port != 0
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "dist": name.port, "pub": config.pub_port}
    assert service["spec"]["clusterIP"] == "None"
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # The cookie from the Secret, the pod IP (and name) from the downward API.
    refs = {e["name"]: e["valueFrom"] for e in c["env"] if "valueFrom" in e}
    assert refs["FABRIC_COOKIE"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": next(iter(secret["stringData"]))}
    assert refs["POD_IP"]["fieldRef"]["fieldPath"] == "status.podIP"
    # Readiness: `fabric ping` of this very node, in a shell that expands ${VAR}.
    command = c["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["sh", "-c"]
    probe = expand(command[2], r"\$\{(\w+)\}").split()
    assert probe[:2] == ["fabric", "ping"] and probe[2].strip('"') == str(name)


def test_the_dockerfile_runs_the_node_program_with_the_dns_extra() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["fabric", "node"]' in text
    assert '".[dns]"' in text
    setup = (DEPLOY.parent / "setup.cfg").read_text()
    assert "fabric = fabric.cli:main" in setup and "dnspython" in setup
    for port in ("9100", "9101"):
        assert port in text.split("EXPOSE", 1)[1].splitlines()[0]
