#!/usr/bin/python3
"""Checks of the chart's rendered manifests that no schema expresses (chart_test.sh).

  rendered_checks.py check RENDERED.yaml INDEX_FROM [POLICIES]   the checks below;
                        INDEX_FROM is "podIndexLabel" or "hostname"; POLICIES: the file the
                        policies ConfigMap must hold
  rendered_checks.py to-json OUT.json RENDERED.yaml...  the objects as JSON for validate.mjs,
                                                      plus, per sidecar snippet, the AI
                                                      service's pod after the patch

Checks: the recommended labels on every object; the restricted security context, resources
and no service-account token on every pod; the StatefulSet (shard count = replicas, headless
service, shard index source, drain shorter than the grace period, probes, volumes); the
PodDisruptionBudget; the sidecar's shard map; the helm test hook; the policies ConfigMap; the
PrometheusRules equal to deploy/prometheus/*.yaml and the dashboard ConfigMaps equal, byte for
byte, to deploy/grafana/dashboards/*.json (nothing evaluated by Helm's templating).
"""
import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = ["helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
          "app.kubernetes.io/version", "app.kubernetes.io/managed-by"]
WORKLOADS = {"StatefulSet", "DaemonSet", "Deployment"}


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def args_of(container):
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], True)
                for a in container.get("args", []) if a.startswith("--"))


def pod_specs(docs):
    """(where, pod spec) of every pod the manifests create or publish."""
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d["metadata"]["name"], d["spec"]
        elif d["kind"] == "ConfigMap" and "patch.yaml" in d["data"]:
            yield "snippet", yaml.safe_load(d["data"]["patch.yaml"])["spec"]["template"]["spec"]


def check_pod_security(where, spec, snippet):
    pod_ctx = spec.get("securityContext", {})
    if not snippet:
        assert spec.get("automountServiceAccountToken") is False, where + ": token mounted"
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        if snippet and c["name"] != "tokenmeter-sidecar":
            continue
        ctx = dict(pod_ctx, **c.get("securityContext", {}))
        name = "%s/%s" % (where, c["name"])
        assert ctx.get("runAsNonRoot") is True, name + ": may run as root"
        assert ctx.get("allowPrivilegeEscalation") is False, name + ": privilege escalation"
        assert ctx.get("readOnlyRootFilesystem") is True, name + ": writable root"
        assert "ALL" in ctx.get("capabilities", {}).get("drop", []), name + ": capabilities"
        assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name + ": seccomp"
        assert c.get("resources", {}).get("requests"), name + ": no resource requests"
        assert c["command"][0].startswith("/usr/local/bin/tokenmeter"), name + ": program"


def check_statefulset(docs, index_from):
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    spec = sts["spec"]
    (c,) = spec["template"]["spec"]["containers"]
    a = args_of(c)
    shards = spec["replicas"]
    assert int(a["shard-count"]) == shards, "shard count %s != replicas %s" % (a, shards)
    (headless,) = [d for d in docs if d["kind"] == "Service" and
                   d["metadata"]["name"] == spec["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None", "serviceName is not a headless Service"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    env = {e["name"]: e for e in c.get("env", [])}
    if index_from == "podIndexLabel":
        assert a.get("shard-index") == "$(SHARD_INDEX)", a
        assert (env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] ==
                "metadata.labels['apps.kubernetes.io/pod-index']")
        assert "shard-index-from-hostname" not in a
    else:
        assert a.get("shard-index-from-hostname") is True and "shard-index" not in a, a
        assert "SHARD_INDEX" not in env
    grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(a["drain-seconds"]), "grace %s <= drain %s" % (grace, a)
    assert "grpc" in c["livenessProbe"] and "grpc" in c["startupProbe"], "gRPC probes"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert a["data-dir"].startswith("/var/lib/tokenmeter/") and mounts["/var/lib/tokenmeter"]
    policy_dir = os.path.dirname(a["policy-file"])
    assert policy_dir in mounts and all("subPath" not in m for m in c["volumeMounts"])
    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    volumes = [v["name"] for v in spec["template"]["spec"].get("volumes", [])]
    assert mounts["/var/lib/tokenmeter"] in claims + volumes
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    return sts, headless, shards


def check_shard_map(docs, sts, headless, shards):
    ns = sts["metadata"]["namespace"]
    pod_dns = r"%s-%%s\.%s\.%s\.svc\.cluster\.local:%d" % (
        re.escape(sts["metadata"]["name"]), re.escape(headless["metadata"]["name"]),
        re.escape(ns), headless["spec"]["ports"][0]["port"])
    sidecars = [c for _, spec in pod_specs(docs)
                for c in spec.get("initContainers", []) + spec.get("containers", [])
                if c["name"] == "tokenmeter-sidecar"]
    assert len(sidecars) == 1, "expected one sidecar (snippet or DaemonSet)"
    a = args_of(sidecars[0])
    assert re.fullmatch(pod_dns % r"\{i\}", a["aggregator-template"]), a
    assert int(a["shard-count"]) == shards
    (test_pod,) = [d for d in docs if d["kind"] == "Pod"]
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    for c in test_pod["spec"]["initContainers"] + test_pod["spec"]["containers"]:
        addresses = args_of(c)["aggregators"].split(",")
        assert [bool(re.fullmatch(pod_dns % i, x)) for i, x in enumerate(addresses)] == \
            [True] * shards, addresses


def check_assets(docs):
    for d in docs:
        kind, meta = d["kind"], d["metadata"]
        if kind == "PrometheusRule":
            name = meta["name"].rsplit("-", 1)[1]
            with open(os.path.join(ROOT, "deploy", "prometheus", "tokenmeter-%s.yaml" % name)) as f:
                assert d["spec"] == yaml.safe_load(f), "PrometheusRule %s differs" % name
        elif kind == "ConfigMap" and meta.get("labels", {}).get("grafana_dashboard") == "1":
            (key, text), = d["data"].items()
            with open(os.path.join(ROOT, "deploy", "grafana", "dashboards", key)) as f:
                source = f.read()
            assert text == source.rstrip("\n"), "dashboard %s was altered" % key
            json.loads(text)


def check_policies(docs, policies_path):
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and
             d["metadata"]["name"] == volume["configMap"]["name"]]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    key = os.path.basename(args_of(c)["policy-file"])
    with open(policies_path) as f:
        assert cm["data"][key] == f.read(), "the policies ConfigMap does not hold " + policies_path


def check(path, index_from, policies_path=None):
    docs = load(path)
    for d in docs:
        labels = d["metadata"].get("labels", {})
        missing = [k for k in LABELS if k not in labels]
        assert not missing, "%s %s lacks %s" % (d["kind"], d["metadata"]["name"], missing)
    for where, spec in pod_specs(docs):
        check_pod_security(where, spec, where == "snippet")
    sts, headless, shards = check_statefulset(docs, index_from)
    check_shard_map(docs, sts, headless, shards)
    check_assets(docs)
    if policies_path:
        check_policies(docs, policies_path)
    kinds = sorted({d["kind"] for d in docs})
    print("rendered_checks: %s: %d objects (%s), %d shards, index from %s: ok" %
          (os.path.basename(path), len(docs), ", ".join(kinds), shards, index_from))


def to_json(out, paths):
    renderings = []
    for path in paths:
        objects = load(path)
        for d in list(objects):
            if d["kind"] == "ConfigMap" and "patch.yaml" in d.get("data", {}):
                template = yaml.safe_load(d["data"]["patch.yaml"])["spec"]["template"]
                spec = dict(template["spec"])
                app = {"name": "ai-service", "image": "example.com/ai-service:1"}
                spec["containers"] = [app] + spec.get("containers", [])
                objects.append({"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": "ai-service-with-sidecar",
                                             "labels": template["metadata"]["labels"]},
                                "spec": spec})
        renderings.append({"name": os.path.basename(path), "objects": objects})
    with open(out, "w") as f:
        json.dump(renderings, f, indent=1)


def main():
    if len(sys.argv) in (4, 5) and sys.argv[1] == "check":
        check(*sys.argv[2:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "to-json":
        to_json(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
