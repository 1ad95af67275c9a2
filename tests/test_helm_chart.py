"""The Helm chart as users run it: linted and rendered by the Helm SDK, every manifest valid for
Kubernetes, values checked by values.schema.json, the rendered wharf.yaml started by a real
``wharf serve``, the chart's test hook run against it, and the node DaemonSet's script writing
containerd's hosts.toml."""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request
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
PEERS = {  # three replicas on disks of their own that fetch each blob once for all of them
    "replicaCount": 3, "redis": {"existingSecret": "wharf-redis"}, "cluster": {"existingSecret": "wharf-cluster"},
    "config": {"cluster": {"lease_seconds": 20}},
}
PEERS_ON_EMPTYDIRS = {  # the same as a Deployment of cache-only pods, each with an emptyDir
    **PEERS, "workload": {"kind": "Deployment"}, "persistence": {"enabled": False},
    "database": {"existingSecret": "wharf-postgres"},
}
VARIANTS = {"defaults": {}, "shared-volume": SHARED, "s3": S3, "everything": EVERYTHING,
            "node-port": {"service": {"type": "NodePort", "nodePort": 30500}, "nodeConfig": {"enabled": True}},
            "statefulset-peers-tls": {**PEERS, "tls": {"existingSecret": "wharf-tls"}},
            "deployment-peers": PEERS_ON_EMPTYDIRS}


def server_pod(objects: list[dict]) -> dict:
    workload = [o for o in objects if o["kind"] in ("StatefulSet", "Deployment")]
    assert len(workload) == 1
    return workload[0]["spec"]["template"]["spec"]


def rendered_config(objects: list[dict]) -> dict:
    return yaml.safe_load(one(objects, "ConfigMap", RELEASE)["data"]["wharf.yaml"])


def pod_env(container: dict, fields: dict[str, str], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The container's environment as the kubelet gives it: ``fields`` answer the downward API
    (fieldRef paths), ``secrets`` the secretKeyRefs, and ``$(VAR)`` expands to a variable defined
    before it."""
    env: dict[str, str] = {}
    for entry in container["env"]:
        source = entry.get("valueFrom", {})
        if "fieldRef" in source:
            value = fields[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            value = secrets[source["secretKeyRef"]["name"], source["secretKeyRef"]["key"]]
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry["value"])
        env[entry["name"]] = value
    return env


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
                 {"ingress": {"hosts": [{"host": "a", "path": "/"}]}},
                 {"cluster": {"existingSecretName": "wharf-cluster"}}, {"config": {"cluster": {"lease": 20}}}):
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


@pytest.mark.parametrize("values, words", [
    ({**PEERS, "config": {"cluster": {"secret_file": "/run/secrets/cluster"}}},
     "either cluster.existingSecret or config.cluster.secret_file"),
    ({**PEERS, "config": {"cluster": {"advertise_url": "http://10.0.0.7:5000"}}}, "advertise_url is per pod"),
    ({**PEERS, "redis": {"existingSecret": ""}, "replicaCount": 1}, "cluster.existingSecret needs Redis"),
    ({"config": {"redis": {"url": "redis://r:6379"}, "cluster": {"secret_file": "/run/secrets/c"}}, "replicaCount": 1,
      "workload": {"kind": "Deployment"}}, "config.cluster.secret_file is for replicas on disks of their own"),
    ({**PEERS_ON_EMPTYDIRS, "tls": {"existingSecret": "wharf-tls"}}, "a certificate does not name"),
])
def test_replicas_sharing_blobs_that_cannot_work_are_refused_with_the_reason(values, words):
    with pytest.raises(HelmError, match=words):
        render(values)


def test_a_statefulset_with_a_cluster_secret_gives_each_pod_its_own_address_and_the_shared_secret():
    objects = manifests(PEERS)
    statefulset = one(objects, "StatefulSet")
    headless = one(objects, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    (container,) = server_pod(objects)["containers"]
    names = [e["name"] for e in container["env"]]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert names.index("POD_NAME") < names.index("WHARF_CLUSTER__ADVERTISE_URL")  # so that $(POD_NAME) expands
    advertised = f"http://$(POD_NAME).{headless['metadata']['name']}.registry.svc:5000"
    assert env["WHARF_CLUSTER__ADVERTISE_URL"]["value"] == advertised
    given = pod_env(container, {"metadata.name": "wharf-1"}, {("wharf-redis", "url"): "redis://redis:6379/0"})
    assert given["WHARF_CLUSTER__ADVERTISE_URL"] == "http://wharf-1.wharf-headless.registry.svc:5000"
    mount = {m["name"]: m for m in container["volumeMounts"]}["cluster-secret"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in server_pod(objects)["volumes"] if v["name"] == "cluster-secret"]
    assert volume["secret"] == {"secretName": "wharf-cluster", "defaultMode": 0o440,
                                "items": [{"key": "secret", "path": "secret"}]}
    cluster = rendered_config(objects)["cluster"]
    assert cluster == {"secret_file": f"{mount['mountPath']}/secret", "lease_seconds": 20}
    assert "advertise_url" not in cluster  # per pod: only in the environment
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_with_tls_the_pods_advertise_https_and_a_secret_key_of_another_name_is_mounted():
    tls = {**PEERS, "tls": {"existingSecret": "wharf-tls"}}
    objects = manifests({**tls, "cluster": {"existingSecret": "peers", "secretKey": "token"}, "config": {"listen": "[::]:5443"}})
    (container,) = server_pod(objects)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WHARF_CLUSTER__ADVERTISE_URL"]["value"] == "https://$(POD_NAME).wharf-headless.registry.svc:5443"
    (volume,) = [v for v in server_pod(objects)["volumes"] if v["name"] == "cluster-secret"]
    assert volume["secret"]["secretName"] == "peers" and volume["secret"]["items"] == [{"key": "token", "path": "secret"}]
    assert "must name *.wharf-headless.registry.svc" in render(tls)["wharf/templates/NOTES.txt"]


def test_a_deployment_of_pods_on_emptydirs_advertises_each_pod_ip():
    objects = manifests(PEERS_ON_EMPTYDIRS)
    one(objects, "Deployment")
    (container,) = server_pod(objects)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["WHARF_CLUSTER__ADVERTISE_URL"]["value"] == "http://$(POD_IP):5000"
    assert "POD_NAME" not in env
    assert rendered_config(objects)["cluster"]["secret_file"] == "/etc/wharf/secrets/cluster/secret"


def test_without_a_cluster_secret_replicas_on_their_own_disks_render_and_the_notes_say_what_it_would_save():
    values = {"replicaCount": 3, "redis": {"existingSecret": "wharf-redis"}}
    objects = manifests(values)
    (container,) = server_pod(objects)["containers"]
    assert not [e for e in container["env"] if e["name"] in ("POD_NAME", "WHARF_CLUSTER__ADVERTISE_URL")]
    assert "cluster" not in rendered_config(objects)
    assert "--set cluster.existingSecret=" in render(values)["wharf/templates/NOTES.txt"]
    assert "cluster.existingSecret" not in render(PEERS)["wharf/templates/NOTES.txt"]


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


def serve_rendered(tmp_path: Path, config: dict, env: dict[str, str] | None = None):
    """``wharf serve`` with a wharf.yaml the chart renders, its root and port moved here the way
    the pod moves them (WHARF_STORAGE__ROOT, WHARF_LISTEN)."""
    port = free_port()
    return start_wharf(tmp_path / "serve", {**config, "listen": f"127.0.0.1:{port}",
                                            "storage": {**config["storage"], "root": str(tmp_path / "data")}}, env)


@pytest.fixture
def chart_wharf(tmp_path):
    wharf = serve_rendered(tmp_path, rendered_config(manifests()))
    try:
        yield wharf
    finally:
        wharf.stop()


def test_the_rendered_cluster_config_and_pod_environment_start_wharf_as_a_replica_of_the_cluster(tmp_path, redis_url):
    objects = manifests(PEERS)
    config = rendered_config(objects)
    (container,) = server_pod(objects)["containers"]
    env = pod_env(container, {"metadata.name": "wharf-0"}, {("wharf-redis", "url"): redis_url})
    secret = tmp_path / "cluster-secret"  # the Secret's key, here instead of its mount path
    secret.write_text("k" * 40)
    config["cluster"] = {**config["cluster"], "secret_file": str(secret)}
    wharf = serve_rendered(tmp_path, config, {k: v for k, v in env.items() if k.startswith("WHARF_CLUSTER__")
                                               or k == "WHARF_REDIS__URL"})
    try:
        # the replica-to-replica route is on (404 when not in a cluster) and refuses an unsigned request
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{wharf.url}/_wharf/peer/blobs/sha256:{'a' * 64}", timeout=10)
        assert refused.value.code == 403
        assert json.loads(refused.value.read())["errors"][0]["code"] == "DENIED"
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
