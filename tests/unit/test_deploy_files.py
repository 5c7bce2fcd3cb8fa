"""The deployment files as text: the Dockerfile and the Kubernetes manifests under deploy/, and the
config they carry."""

from __future__ import annotations

import json
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from token_exchange.config.settings import parse_settings
from token_exchange.serve.cli import _parser

from ..test_deploy import ROOT, dockerfile, final_stage, only

DEPLOY = ROOT / "deploy" / "kubernetes"


def test_dockerfile_is_multi_stage_without_build_tools_in_the_image() -> None:
    assert sum(name == "FROM" for name, _ in dockerfile()) >= 2
    stage = final_stage()
    runs = " ".join(value for name, value in stage if name == "RUN")
    for tool in ("gcc", "build-essential", "apt-get install", "make "):
        assert tool not in runs
    copies = [value for name, value in stage if name == "COPY"]
    assert copies
    assert all(c.startswith("--from=") for c in copies), "only built artefacts reach the image"
    assert not any("keys" in c or "config" in c for c in copies), "keys and config are mounted"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    user = only(final_stage(), "USER").split(":")[0]
    assert user not in ("root", "0")


def test_dockerfile_entrypoint_is_the_console_script_serving_the_exposed_port() -> None:
    stage = final_stage()
    entrypoint = json.loads(only(stage, "ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["token-exchange"]
    assert "token-exchange" in scripts
    args = _parser().parse_args(json.loads(only(stage, "CMD")))
    assert args.command == "serve"
    assert str(args.port) == only(stage, "EXPOSE")
    healthcheck = only(stage, "HEALTHCHECK")
    assert f"127.0.0.1:{args.port}/healthz" in healthcheck


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def kind(manifests: list[dict[str, Any]], name: str) -> Iterator[dict[str, Any]]:
    return (m for m in manifests if m["kind"] == name)


def test_every_manifest_is_a_kubernetes_object(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        assert {"apiVersion", "kind", "metadata"} <= set(manifest)
        assert manifest["metadata"]["name"]
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "ConfigMap", "CronJob", "ServiceAccount", "Role",
            "RoleBinding"} <= kinds  # fmt: skip


def _container(manifests: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = kind(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _config(manifests: list[dict[str, Any]]) -> str:
    (configmap,) = kind(manifests, "ConfigMap")
    return str(configmap["data"]["config.toml"])


def test_deployment_probes_resources_and_hardening(manifests: list[dict[str, Any]]) -> None:
    pod, container = _container(manifests)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    args = _parser().parse_args(container["args"])
    assert args.command == "serve"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == args.port


def test_keys_come_from_a_secret_volume_where_the_config_looks(
    manifests: list[dict[str, Any]],
) -> None:
    pod, container = _container(manifests)
    config = tomllib.loads(_config(manifests))
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    keys_mount = mounts[config["signing"]["keys_dir"]]
    assert keys_mount["readOnly"] is True
    assert volumes[keys_mount["name"]]["secret"]["secretName"] == "token-exchange-keys"
    env = {e["name"]: e for e in container["env"]}
    config_path = Path(env["TOKEN_EXCHANGE_CONFIG"]["value"])
    config_mount = mounts[str(config_path.parent)]
    assert volumes[config_mount["name"]]["configMap"]["name"] == "token-exchange-config"
    # Writable scratch for the metrics of the worker processes, as the root is read-only.
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_redis_and_secrets_arrive_by_environment(manifests: list[dict[str, Any]]) -> None:
    _, container = _container(manifests)
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["TOKEN_EXCHANGE_STORE_URL"]["valueFrom"]
    config = tomllib.loads(_config(manifests))
    for source in config["permissions"].values():
        if "token_env" in source:
            assert "secretKeyRef" in env[source["token_env"]]["valueFrom"]


def test_the_configmaps_config_is_valid(manifests: list[dict[str, Any]], tmp_path: Path) -> None:
    settings = parse_settings(
        tomllib.loads(_config(manifests)),
        env={"PERMISSIONS_API_TOKEN": "t", "TOKEN_EXCHANGE_STORE_URL": "redis://redis:6379/0"},
        base_dir=tmp_path,
    )
    assert settings.store.url.startswith("redis://")
    _, container = _container(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.metrics.port == ports["metrics"]


def test_the_rotation_cronjob_runs_a_valid_rotate_command(manifests: list[dict[str, Any]]) -> None:
    (cronjob,) = kind(manifests, "CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (rotate,) = pod["initContainers"]
    script = " ".join(rotate["args"])
    command = next(
        shlex.split(part) for part in script.split("&&") if "token-exchange keys rotate" in part
    )
    args = _parser().parse_args(command[1:])
    assert args.keys_command == "rotate"
    assert args.config  # the service's lifetimes, not guesses
    assert pod["serviceAccountName"] == "token-exchange-key-rotator"
    (role,) = kind(manifests, "Role")
    assert role["rules"][0]["resourceNames"] == ["token-exchange-keys"]


def test_every_container_is_hardened(manifests: list[dict[str, Any]]) -> None:
    pods = [m["spec"]["template"]["spec"] for m in kind(manifests, "Deployment")] + [
        m["spec"]["jobTemplate"]["spec"]["template"]["spec"] for m in kind(manifests, "CronJob")
    ]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            if not container["image"].startswith("token-exchange:"):
                assert not container["image"].endswith(":latest"), "pin third-party images"
