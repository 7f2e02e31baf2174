#!/usr/bin/python3
"""Manifests meet the binaries: the chart's rendered pods, started as local processes.

For each scenario the chart is rendered with the real helm, then the exact commands, args and
env of the rendered containers are started (k8s_local.py: the image's programs mapped to the
local build, downward-API values, volumes and cluster DNS names substituted for loopback):
  - every aggregator pod of the StatefulSet, each with its own pod IP and hostname = pod name;
    each must pass its startup, readiness and liveness probes and serve shard i of N;
  - the sidecar (the pod-mode snippet patch, or the DaemonSet's pod);
  - real traffic through the sidecar: Report, Check, Reserve + Commit; then every tenant's
    usage must arrive at exactly one shard (the others refuse it as not the owner);
  - the policy file's ConfigMap is updated in place (the kubelet's atomic swap): the shards
    must apply the new policy without a restart;
  - the `helm test` pod's containers (tokenmeterctl) must exit 0;
  - SIGTERM: every process must exit 0 within its pod's terminationGracePeriodSeconds.
A flag renamed in C++ but not in the chart (or the reverse) fails here.

Scenarios: defaults on Kubernetes 1.29 (shard index from the pod-index label, sidecar in the
AI service's pod); ci/shards-5 + ci/sidecar-daemonset on 1.27 without the pod-index label
(index from the hostname, one sidecar per node); ci/all-optional (extra flags of both programs,
the sidecar as a native sidecar serving a unix socket). deploy/local/policies.yaml is the
policy file of every scenario.
Usage: manifests_test.py --build-dir DIR --aggregator BIN --sidecar BIN --ctl BIN
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from k8s_local import Container, Pod, free_loopback_net, write_atomic_configmap  # noqa: E402
from tm_grpc import Client, load_stubs, tenant_usage  # noqa: E402

CHART = os.path.join(ROOT, "deploy", "helm", "tokenmeter")
POLICIES = os.path.join(ROOT, "deploy", "local", "policies.yaml")
RELEASE, NAMESPACE = "tm", "ai-platform"
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "k8s-a", "k8s-b", "k8s-c", "k8s-d"]
RELOAD_TENANT = "k8s-reload"


def log(msg):
    print("[manifests_test %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def wait_for(what, condition, timeout, interval=0.25):
    """Polls condition() until it returns True or a list (a found value); bounded by timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last is True or isinstance(last, list):
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s (last: %r)" % (timeout, what, last))


def render(helm, kube_version, values_files):
    cmd = [helm, "template", RELEASE, CHART, "--namespace", NAMESPACE,
           "--kube-version", kube_version, "--set-file", "policies.content=" + POLICIES]
    for f in values_files:
        cmd += ["-f", os.path.join(CHART, "ci", f)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs, kind, name_suffix=""):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, "expected one %s *%s, found %d" % (kind, name_suffix, len(found))
    return found[0]


def check_probe_listeners(container):
    """A probe reaches the pod IP: the port it checks must be bound on 0.0.0.0, not loopback."""
    args = " ".join(container.get("args", []))
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if not probe:
            continue
        handler = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
        port = handler["port"]
        if not isinstance(port, int):
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
        assert "0.0.0.0:%d" % port in args, (
            "%s %s checks port %d, which %s does not listen on at 0.0.0.0 (args: %s)" %
            (container["name"], kind, port, container["name"], args))


class Scenario:
    def __init__(self, name, kube_version, values_files, pod_index_label):
        self.name, self.kube_version, self.values_files = name, kube_version, values_files
        self.pod_index_label = pod_index_label  # Does the cluster set apps.kubernetes.io/pod-index?


class Run:
    """One scenario: the rendered objects, the local pods, the processes."""

    def __init__(self, scenario, docs, workdir, programs, stubs):
        self.scenario, self.docs, self.workdir = scenario, docs, workdir
        self.programs, self.stubs = programs, stubs
        self.sts = find(docs, "StatefulSet", "-aggregator")
        self.shards = self.sts["spec"]["replicas"]
        self.configmaps = {d["metadata"]["name"]: d["data"] for d in docs
                           if d["kind"] == "ConfigMap"}
        ports = [p["containerPort"] for c in self.sts["spec"]["template"]["spec"]["containers"]
                 for p in c["ports"]]
        self.net = free_loopback_net(ports)
        self.containers = []  # Started, in start order.
        self.aggregators = []
        self.sidecar = None

    def pod_ip(self, index):
        return "127.%d.%d.1" % (self.net, index)

    def resolve_host(self, host):
        """Cluster DNS of the shard pods -> their local pod IPs ("{i}" stays a template)."""
        sts, svc = self.sts["metadata"]["name"], self.sts["spec"]["serviceName"]
        m = re.fullmatch(r"%s-(\d+|\{i\})\.%s\.%s\.svc\.cluster\.local" %
                         (re.escape(sts), re.escape(svc), re.escape(NAMESPACE)), host)
        assert m, "DNS name %s is not a shard pod of %s via %s" % (host, sts, svc)
        return "127.%d.%s.1" % (self.net, m.group(1))

    def start_shards(self):
        template = self.sts["spec"]["template"]
        volumes = list(template["spec"].get("volumes", []))
        volumes += [{"name": c["metadata"]["name"], "persistentVolumeClaim": {}}
                    for c in self.sts["spec"].get("volumeClaimTemplates", [])]
        for i in range(self.shards):
            name = "%s-%d" % (self.sts["metadata"]["name"], i)
            labels = dict(template["metadata"]["labels"])
            labels["statefulset.kubernetes.io/pod-name"] = name
            if self.scenario.pod_index_label:
                labels["apps.kubernetes.io/pod-index"] = str(i)
            pod = Pod(name, NAMESPACE, labels, self.pod_ip(i),
                      os.path.join(self.workdir, name), volumes, self.configmaps)
            (spec,) = template["spec"]["containers"]
            container = Container(pod, spec, self.programs, self.resolve_host)
            container.start()
            self.containers.append(container)
            self.aggregators.append(container)
        for i, container in enumerate(self.aggregators):
            container.wait_started()
            assert container.probe("readinessProbe"), "shard %d not ready" % i
            assert container.probe("livenessProbe"), "shard %d not live" % i
            wait_for("shard %d to log its identity" % i,
                     lambda: "shard=%d/%d" % (i, self.shards) in container.log_text(), 10)
        log("%d shards serve, each shard i = pod ordinal, passing its startup, readiness and "
            "liveness probes: %s" % (self.shards, ", ".join(
                "%s@%s" % (c.pod.name, c.pod.ip) for c in self.aggregators)))

    def sidecar_pod(self):
        """(pod name, labels, volumes, container spec, grace seconds) of the sidecar."""
        daemonsets = [d for d in self.docs if d["kind"] == "DaemonSet"]
        if daemonsets:
            template = daemonsets[0]["spec"]["template"]
            (spec,) = template["spec"]["containers"]
            return ("%s-x7k2p" % daemonsets[0]["metadata"]["name"], template["metadata"]["labels"],
                    template["spec"]["volumes"], spec,
                    template["spec"]["terminationGracePeriodSeconds"])
        (snippet,) = [data["patch.yaml"] for data in self.configmaps.values()
                      if "patch.yaml" in data]
        template = yaml.safe_load(snippet)["spec"]["template"]
        pod_spec = template["spec"]
        (spec,) = pod_spec.get("containers", []) + pod_spec.get("initContainers", [])
        return ("ai-service-5d9c7-abcde", template["metadata"]["labels"], pod_spec["volumes"],
                spec, 30)  # An AI service's pod; Kubernetes' default grace period.

    def start_sidecar(self):
        name, labels, volumes, spec, grace = self.sidecar_pod()
        check_probe_listeners(spec)
        pod = Pod(name, NAMESPACE, labels, self.pod_ip(255), os.path.join(self.workdir, name),
                  volumes, self.configmaps)
        self.sidecar = Container(pod, spec, self.programs, self.resolve_host)
        self.sidecar.grace = grace
        self.sidecar.start()
        self.containers.append(self.sidecar)
        self.sidecar.wait_started()
        assert self.sidecar.probe("readinessProbe") and self.sidecar.probe("livenessProbe")
        port = self.sidecar.port("tm-grpc")
        # The AI service's containers call the unix socket when the sidecar serves one.
        sockets = [a.split("=", 1)[1] for a in self.sidecar.argv if a.startswith("--unix-socket=")]
        address = "unix:" + sockets[0] if sockets else "%s:%d" % (pod.ip, port)
        log("sidecar %s (%s) serves; its probes pass; the AI service calls %s" %
            (name, "init container, restartPolicy Always" if spec.get("restartPolicy") ==
             "Always" else "container", address))
        return address

    def shard_addresses(self):
        port = self.aggregators[0].port("grpc")
        return ["%s:%d" % (self.pod_ip(i), port) for i in range(self.shards)]

    def traffic(self, sidecar_address):
        client = Client(self.stubs, sidecar_address)
        run_id = uuid.uuid4().hex[:8]
        start = time.time()
        sent = {}
        try:
            events = []
            for n in range(90):
                tenant = TENANTS[n % len(TENANTS)]
                inp, out = 100 + n, 10 + n % 7
                events.append(client.event("%s-%d" % (run_id, n), tenant, "agents",
                                           "u%d" % (n % 4), "gpt-4o", inp, out))
                total = sent.setdefault(tenant, {"input": 0, "output": 0, "requests": 0})
                total["input"] += inp
                total["output"] += out
                total["requests"] += 1
            for i in range(0, len(events), 30):
                assert client.report(events[i:i + 30]) == len(events[i:i + 30])
            decision = client.check(client.scope("acme", "agents", "u1"), 1000, 100)
            assert client.allowed(decision), decision
            policies = {limit.policy_id for limit in decision.limits}
            assert "acme-monthly-spend" in policies, "policy file not in force: %s" % policies
            reservation = "%s-r1" % run_id
            decision = client.reserve(reservation, client.scope("globex", "data", "ivan"), 500, 50)
            assert client.allowed(decision), decision
            client.commit(reservation, "globex", 400, 40)
            g = sent.setdefault("globex", {"input": 0, "output": 0, "requests": 0})
            g["input"] += 400
            g["output"] += 40
            g["requests"] += 1
        finally:
            client.close()
        owners = {}
        for tenant, expected in sent.items():
            def arrived():
                owner, totals = tenant_usage(self.stubs, self.shard_addresses(), tenant, start,
                                             time.time())
                return [owner] if owner is not None and totals == expected else (owner, totals)
            result = wait_for("usage of %s at its owner shard" % tenant, arrived, 30, 0.5)
            assert isinstance(result, list), result
            owners[tenant] = result[0]
        assert len(set(owners.values())) > 1, "every tenant on one shard: %s" % owners
        log("traffic: %d events, a Check, a Reserve + Commit through the sidecar; usage of %d "
            "tenants arrived exactly once at owner shards %s" %
            (90, len(sent), sorted(set(owners.values()))))

    def hot_reload(self, sidecar_address):
        """Updates the policies ConfigMap in every shard's volume, as the kubelet would."""
        mount = next(v for v in self.sts["spec"]["template"]["spec"]["volumes"]
                     if "configMap" in v)
        cm_name = mount["configMap"]["name"]
        (key,) = self.configmaps[cm_name]
        policy = yaml.safe_load(self.configmaps[cm_name][key])
        policy["policies"].append({"id": "k8s-reload-cap", "selector": {"tenant": RELOAD_TENANT},
                                   "limits": [{"metric": "total_tokens", "window": "day",
                                               "amount": 10}]})
        client = Client(self.stubs, sidecar_address)
        try:
            scope = client.scope(RELOAD_TENANT, "t", "u")
            assert client.allowed(client.check(scope, 100, 0)), "denied before the reload"
            for container in self.aggregators:
                write_atomic_configmap(container.pod.volume_dirs[mount["name"]],
                                       {key: yaml.safe_dump(policy)}, "v2")
            wait_for("the shards to apply the updated policy ConfigMap",
                     lambda: not client.allowed(client.check(scope, 100, 0)), 30, 0.5)
        finally:
            client.close()
        log("policies ConfigMap updated in place: the new limit applies without a restart")

    def helm_test_pod(self):
        pod_doc = next(d for d in self.docs if d["kind"] == "Pod" and
                       d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test")
        pod = Pod(pod_doc["metadata"]["name"], NAMESPACE, pod_doc["metadata"]["labels"],
                  self.pod_ip(254), os.path.join(self.workdir, "helm-test"),
                  pod_doc["spec"].get("volumes", []), self.configmaps)
        for spec in pod_doc["spec"].get("initContainers", []) + pod_doc["spec"]["containers"]:
            container = Container(pod, spec, self.programs, self.resolve_host)
            rc, output = container.run_to_completion(90)
            assert rc == 0, "helm test container %s exited %s:\n%s" % (spec["name"], rc, output)
        log("helm test pod: %s pass" % ", ".join(
            c["name"] for c in pod_doc["spec"].get("initContainers", []) +
            pod_doc["spec"]["containers"]))

    def terminate(self):
        grace = self.sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        results = []
        if self.sidecar is not None:  # The AI service's pod first, then the shards together.
            results.append((self.sidecar, self.sidecar.terminate(self.sidecar.grace)))
        for container in self.aggregators:
            container.send_sigterm()
        for container in self.aggregators:
            results.append((container, container.terminate(grace)))
        for container, (rc, seconds) in results:
            assert rc == 0, "%s of %s: exit %s on SIGTERM:\n%s" % (
                container.name, container.pod.name, rc, container.log_text()[-2000:])
        log("SIGTERM: every process exited 0 within its grace period (slowest %.1f s)" %
            max(seconds for _, (_, seconds) in results))

    def kill_all(self):
        for container in self.containers:
            container.kill()


def run_scenario(scenario, helm, programs, stubs, workdir):
    log("== %s: helm template --kube-version %s %s" %
        (scenario.name, scenario.kube_version, " ".join("-f ci/" + f for f in
                                                        scenario.values_files)))
    docs = render(helm, scenario.kube_version, scenario.values_files)
    run = Run(scenario, docs, workdir, programs, stubs)
    container = run.sts["spec"]["template"]["spec"]["containers"][0]
    check_probe_listeners(container)
    uses_label = "--shard-index=$(SHARD_INDEX)" in container["args"]
    assert uses_label == scenario.pod_index_label, (
        "shard index source: label=%s on a cluster %s the pod-index label" %
        (uses_label, "with" if scenario.pod_index_label else "without"))
    try:
        run.start_shards()
        sidecar_address = run.start_sidecar()
        run.traffic(sidecar_address)
        run.hot_reload(sidecar_address)
        run.helm_test_pod()
        run.terminate()
    finally:
        run.kill_all()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", required=True)
    parser.add_argument("--aggregator", required=True)
    parser.add_argument("--sidecar", required=True)
    parser.add_argument("--ctl", required=True)
    args = parser.parse_args()
    build_dir = os.path.abspath(args.build_dir)
    tools = subprocess.run(["bash", os.path.join(HERE, "npm_tools.sh"), build_dir], check=True,
                           capture_output=True, text=True).stdout.strip()
    helm = os.path.join(tools, "node_modules", ".bin", "helm")
    stubs = load_stubs(ROOT, os.path.join(build_dir, "k8s-stubs"))
    # The image's programs (deploy/image/build.sh puts them in /usr/local/bin).
    programs = {"/usr/local/bin/tokenmeter-aggregator": os.path.abspath(args.aggregator),
                "/usr/local/bin/tokenmeter-sidecar": os.path.abspath(args.sidecar),
                "/usr/local/bin/tokenmeterctl": os.path.abspath(args.ctl)}
    # A short path: unix socket paths are limited to 107 bytes. Kept on failure (logs).
    workdir = tempfile.mkdtemp(prefix="tm-k8s-")
    log("work directory %s" % workdir)
    scenarios = [
        Scenario("defaults, Kubernetes 1.29: pod-index label, sidecar in the AI service's pod",
                 "1.29.0", [], True),
        Scenario("5 shards, Kubernetes 1.27: index from the hostname, sidecar DaemonSet",
                 "1.27.0", ["shards-5-values.yaml", "sidecar-daemonset-values.yaml"], False),
        Scenario("everything optional on: 4 shards, extra flags, native sidecar on a unix "
                 "socket", "1.29.0", ["all-optional-values.yaml"], True),
    ]
    for i, scenario in enumerate(scenarios):
        run_scenario(scenario, helm, programs, stubs, os.path.join(workdir, "s%d" % i))
    shutil.rmtree(workdir, ignore_errors=True)
    log("PASS")


if __name__ == "__main__":
    main()
