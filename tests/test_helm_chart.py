"""The Helm chart as users run it: linted and rendered by the Helm SDK, every manifest valid for
Kubernetes, values checked by values.schema.json, the rendered wharf.yaml started by a real
``wharf serve``, the chart's test hook run against it, and the node DaemonSet's script writing
containerd's hosts.toml."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_python.errors import HelmError

from support.helm_chart import RELEASE, default_values, lint, load_chart, manifests, one, render, schema
from support.servers import free_port
from support.wharf_serve import start_wharf, wharf_env

pytestmark = pytest.mark.once  # generated files: no fast path in them (pyproject.toml)

KUBERNETES = "1.30"
SHARED = {  # three replicas on one ReadWriteMany volume with Redis and PostgreSQL from Secrets
    "workload": {"kind": "Deployment"}, "replicaCount": 3,
    "redis": {"existingSecret": "wharf-redis"}, "database": {"existingSecret": "wharf-postgres"},
}
S3 = {
    "config": {"storage": {"backend": "s3", "s3": {"bucket": "wharf-blobs", "prefix": "cluster-a",
                                                   "endpoint_url": "http://minio:9000", "redirect": True}}},
    "s3": {"existingSecret": "wharf-s3"},
}
EVERYTHING = {**SHARED, **S3, "ingress": {"enabled": True, "className": "nginx", "hosts": [{"host": "wharf.example"}],
                                          "tls": [{"secretName": "wharf-example", "hosts": ["wharf.example"]}]},
              "nodeConfig": {"enabled": True}, "tls": {"existingSecret": "wharf-tls"},
              "serviceMonitor": {"enabled": False}}
VARIANTS = {"defaults": {}, "shared-volume": SHARED, "s3": S3, "everything": EVERYTHING,
            "node-port": {"service": {"type": "NodePort", "nodePort": 30500}, "nodeConfig": {"enabled": True}}}


def server_pod(objects: list[dict]) -> dict:
    workload = [o for o in objects if o["kind"] in ("StatefulSet", "Deployment")]
    assert len(workload) == 1
    return workload[0]["spec"]["template"]["spec"]


def rendered_config(objects: list[dict]) -> dict:
    return yaml.safe_load(one(objects, "ConfigMap", RELEASE)["data"]["wharf.yaml"])


def test_the_helm_sdk_lints_the_chart_strictly_with_no_warning():
    for values in VARIANTS.values():
        report = lint(values)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_manifest_is_valid_kubernetes(variant):
    objects = manifests(VARIANTS[variant])
    assert objects
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD: kubernetes-validate has no schema for it
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_the_schema_accepts_the_defaults_and_rejects_unknown_keys_at_every_level():
    validator = jsonschema.Draft7Validator(schema())
    validator.validate(default_values())
    for values in VARIANTS.values():
        validator.validate(values)
    for typo in ({"replicas": 3}, {"config": {"storage": {"bakend": "s3"}}},
                 {"config": {"upstreams": [{"name": "x", "url": "https://x", "pasword_file": "/p"}]}},
                 {"persistence": {"sise": "1Gi"}}, {"nodeConfig": {"hostDir": "/etc"}},
                 {"ingress": {"hosts": [{"host": "a", "path": "/"}]}}):
        with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
            validator.validate(typo)
        with pytest.raises(HelmError, match="additional properties"):
            render(typo)  # helm install / template refuse it the same way


def every_object_schema_forbids_unknown_keys(node, path="") -> list[str]:
    """Paths of object schemas that name properties but leave additionalProperties open."""
    open_ = []
    if isinstance(node, dict):
        if "properties" in node and node.get("additionalProperties") is not False and path:
            open_.append(path)
        for key, child in node.items():
            open_ += every_object_schema_forbids_unknown_keys(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            open_ += every_object_schema_forbids_unknown_keys(child, f"{path}/{i}")
    return open_


def test_every_section_of_the_schema_forbids_unknown_keys():
    top = schema()
    assert top["additionalProperties"] is False
    # probes are Kubernetes Probe objects plus the chart's "enabled": their fields pass through
    assert [p for p in every_object_schema_forbids_unknown_keys(top) if "Probe" not in p] == []


def test_the_server_pod_is_hardened_and_probed_on_healthz_and_readyz():
    pod = server_pod(manifests())
    assert pod["enableServiceLinks"] is False  # no WHARF_SERVICE_HOST, WHARF_PORT… beside Wharf's own keys
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"] and context["capabilities"]["drop"] == ["ALL"]
    assert context["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]["memory"]
    spread = pod["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "wharf", "app.kubernetes.io/instance": RELEASE}


def test_a_statefulset_gives_each_replica_its_own_disk():
    objects = manifests({"replicaCount": 2, "config": {"redis": {"url": "redis://redis:6379/0"}}})
    statefulset = one(objects, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 2
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not [o for o in objects if o["kind"] in ("Deployment", "PersistentVolumeClaim")]


def test_a_deployment_shares_one_readwritemany_volume_between_its_replicas():
    objects = manifests(SHARED)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    data = [v for v in server_pod(objects)["volumes"] if v["name"] == "data"]
    assert data == [{"name": "data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}]
    assert not [o for o in objects if o["kind"] == "StatefulSet"]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("values, words", [
    ({"replicaCount": 3}, "needs Redis"),
    ({"workload": {"kind": "Deployment"}, "replicaCount": 3, "config": {"redis": {"url": "redis://r:6379"}}}, "needs PostgreSQL"),
    ({**SHARED, "persistence": {"accessModes": ["ReadWriteOnce"]}}, "must include ReadWriteMany"),
    ({"config": {"storage": {"backend": "s3"}}}, "bucket is required"),
])
def test_replica_settings_that_cannot_work_are_refused_with_the_reason(values, words):
    with pytest.raises(HelmError, match=words):
        render(values)


def test_secrets_reach_the_pod_as_references_and_files_never_in_clear():
    objects = manifests(EVERYTHING)
    (container,) = server_pod(objects)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WHARF_DATABASE__URL"]["valueFrom"]["secretKeyRef"] == {"name": "wharf-postgres", "key": "url"}
    assert env["WHARF_REDIS__URL"]["valueFrom"]["secretKeyRef"] == {"name": "wharf-redis", "key": "url"}
    assert all("value" not in e for n, e in env.items() if n.endswith("__URL"))
    s3 = rendered_config(objects)["storage"]["s3"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert s3["access_key_id_file"] == f"{mounts['s3-keys']}/access_key_id"
    assert s3["secret_access_key_file"] == f"{mounts['s3-keys']}/secret_access_key"
    (keys,) = [v for v in server_pod(objects)["volumes"] if v["name"] == "s3-keys"]
    assert keys["secret"]["secretName"] == "wharf-s3"
    assert {i["path"] for i in keys["secret"]["items"]} == {"access_key_id", "secret_access_key"}
    assert (s3["bucket"], s3["prefix"], s3["endpoint_url"], s3["redirect"]) == ("wharf-blobs", "cluster-a", "http://minio:9000", True)
    assert not [o for o in objects if o["kind"] == "Secret"]  # the chart creates none: existing Secrets only


def test_the_ingress_routes_the_host_to_the_service():
    objects = manifests(EVERYTHING)
    rule = one(objects, "Ingress")["spec"]["rules"][0]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert rule["host"] == "wharf.example"
    assert backend == {"name": one(objects, "Service", RELEASE)["metadata"]["name"], "port": {"name": "http"}}


def selected_by(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_only_server_pods_are_behind_the_service():
    objects = manifests(EVERYTHING)
    selector = one(objects, "Service", RELEASE)["spec"]["selector"]
    assert selected_by(selector, one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"])
    assert not selected_by(selector, one(objects, "Pod")["metadata"]["labels"])
    assert not selected_by(selector, one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"])


@pytest.fixture
def chart_wharf(tmp_path):
    """``wharf serve`` with the wharf.yaml the chart renders, its root and port moved here the way
    the pod moves them (WHARF_STORAGE__ROOT, WHARF_LISTEN)."""
    config = rendered_config(manifests())
    port = free_port()
    config_file = tmp_path / "wharf.yaml"
    config_file.write_text(yaml.safe_dump(config))
    wharf = start_wharf(tmp_path / "serve", {**config, "listen": f"127.0.0.1:{port}",
                                              "storage": {**config["storage"], "root": str(tmp_path / "data")}})
    try:
        yield wharf
    finally:
        wharf.stop()


def run_test_hook(url: str) -> subprocess.CompletedProcess:
    """The chart's helm-test pod command, run here with ``url`` in place of the Service's."""
    (container,) = one(manifests(), "Pod")["spec"]["containers"]
    assert container["command"] == ["python3", "-c"]
    code, service_url = container["args"]
    assert service_url == f"http://{RELEASE}.registry.svc:5000/v2/"
    return subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=30)


def test_the_chart_test_hook_passes_against_the_rendered_config_served_and_fails_when_nothing_answers(chart_wharf):
    pod = one(manifests(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    passed = run_test_hook(chart_wharf.url + "/v2/")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    chart_wharf.stop()
    failed = run_test_hook(chart_wharf.url + "/v2/")
    assert failed.returncode != 0


def node_script(tmp_path: Path, values: dict) -> tuple[Path, dict]:
    """The DaemonSet's ConfigMap files written to ``tmp_path`` and its container's env."""
    objects = manifests(values)
    for name, text in one(objects, "ConfigMap", f"{RELEASE}-node")["data"].items():
        (tmp_path / name).write_text(text)
    (container,) = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    return tmp_path / container["command"][1].rsplit("/", 1)[1], env


def test_the_node_daemonset_writes_the_hosts_toml_wharf_generates_and_removes_it_on_stop(tmp_path):
    script, env = node_script(tmp_path, {"nodeConfig": {"enabled": True}})
    certs_d = tmp_path / "certs.d"
    # the Service's address as Kubernetes injects it (the DaemonSet's pod keeps service links)
    service = {f"{env['SERVICE_ENV']}_SERVICE_HOST": "10.96.0.10", f"{env['SERVICE_ENV']}_SERVICE_PORT": "5000"}
    process = subprocess.Popen([sys.executable, str(script)], env=wharf_env({**env, **service, "HOSTS_DIR": str(certs_d)}),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        hosts = certs_d / "docker.io" / "hosts.toml"
        deadline = time.monotonic() + 20
        while not hosts.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hosts.exists(), process.stdout.read() if process.poll() is not None else "not written"
        client_config = tmp_path / "cfg.yaml"  # the chart's upstreams, for wharf client-config
        client_config.write_text(yaml.safe_dump({"upstreams": json.loads((tmp_path / "upstreams.json").read_text())}))
        expected = subprocess.run([sys.executable, "-m", "proxy", "client-config", "containerd", "--host",
                                   "10.96.0.10:5000", "--config", str(client_config)],
                                  env=wharf_env(), capture_output=True, text=True)
        assert expected.returncode == 0, expected.stderr
        assert hosts.read_text() in expected.stdout
        assert 'server = "https://registry-1.docker.io"' in hosts.read_text()
        assert '[host."http://10.96.0.10:5000"]' in hosts.read_text()
        names = sorted(p.parent.name for p in certs_d.glob("*/hosts.toml"))
        assert names == sorted(u["name"] for u in default_values()["config"]["upstreams"])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    assert list(certs_d.glob("*/hosts.toml")) == []


def test_with_a_node_port_the_daemonset_points_nodes_at_their_own_ip():
    objects = manifests(VARIANTS["node-port"])
    spec = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["NODE_WHARF_HOST"]["value"] == "$(NODE_IP):30500"
    assert spec["enableServiceLinks"] is False
    assert spec["volumes"][1]["hostPath"]["path"] == "/etc/containerd/certs.d"
