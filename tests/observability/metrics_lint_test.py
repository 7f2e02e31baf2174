#!/usr/bin/python3
"""The exposition of a live shard and a live sidecar passes `promtool check metrics` with no
findings, after traffic created every kind of series (usage by tenant/team/model/type, quota
decisions of every result, closed reservations, rejected events, sidecar streams).
Also: /healthz and /readyz answer 200 on both, and every family has HELP and TYPE.

Usage: metrics_lint_test.py --aggregator BIN --sidecar BIN [--workdir DIR]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # No __pycache__ in the source tree.
import obs_cluster as oc  # noqa: E402


def metric_value(text, name, labels=""):
    """Sum of the samples of `name` whose label string contains `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name), line)
        if m and labels in (m.group(1) or ""):
            total += float(m.group(2))
            found = True
    return total if found else None


def check_families(name, text):
    """Every sample belongs to a family with # HELP and # TYPE."""
    helps = set(re.findall(r"^# HELP (\S+) \S", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    problems = []
    for fam in sorted(set(helps) ^ set(types)):
        problems.append("%s: %s has HELP or TYPE but not both" % (name, fam))
    for sample in set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)):
        base = re.sub(r"_(bucket|sum|count)$", "", sample)
        if sample not in types and not (base in types and types[base] == "histogram"):
            problems.append("%s: sample %s has no # TYPE" % (name, sample))
    return problems, len(types)


def promtool_check(name, text, workdir):
    path = os.path.join(workdir, name + ".metrics.txt")
    with open(path, "w") as f:
        f.write(text)
    with open(path) as f:
        r = subprocess.run(["promtool", "check", "metrics"], stdin=f, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
    oc.log("promtool check metrics %s (%d bytes): exit %d%s" %
           (name, len(text), r.returncode, (", output:\n" + r.stdout) if r.stdout else ""))
    return r.returncode == 0 and not r.stdout.strip()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--aggregator", required=True)
    p.add_argument("--sidecar", required=True)
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    if shutil.which("promtool") is None:
        oc.fail("promtool not found (Debian package prometheus; deploy/local/install-deps.sh)")
    workdir = args.workdir or tempfile.mkdtemp(prefix="tokenmeter-obs-lint-")
    policies = os.path.join(oc.ROOT, "deploy", "local", "policies.yaml")
    ok = True
    with oc.Cluster(workdir, args.aggregator, args.sidecar) as c:
        c.start_shards(1, policies)
        c.start_sidecar()
        c.client("traffic", "--sidecar", c.sidecar_addr(), "--shards", c.shard_addrs(),
                 "--duration", "8", "--interval", "0.5")
        shard_port, sidecar_port = c.shards[0][1], c.sidecar[1]
        # Bounded wait until the sidecar's queue drained into the shard.
        oc.wait_for("events applied and sidecar queue empty", lambda: (
            (metric_value(oc.scrape(shard_port), "tokenmeter_ingest_events_applied_total") or 0)
            > 0 and metric_value(oc.scrape(sidecar_port), "tokenmeter_sidecar_queue_events")
            == 0), 60)
        for name, port in (("shard", shard_port), ("sidecar", sidecar_port)):
            for path in ("/healthz", "/readyz"):
                oc.http_get("http://127.0.0.1:%d%s" % (port, path))  # Raises unless 200.
            text = oc.scrape(port)
            problems, families = check_families(name, text)
            for line in problems:
                oc.log("FAIL: " + line)
            ok = ok and not problems
            ok = promtool_check(name, text, workdir) and ok
            oc.log("%s: %d families, %d samples" % (name, families, sum(
                1 for line in text.splitlines() if line and not line.startswith("#"))))
        shard_text = oc.scrape(shard_port)
        for name, labels in (("tokenmeter_usage_tokens_total", 'type="cached_input"'),
                             ("tokenmeter_usage_cost_micro_usd_total", 'team="agents"'),
                             ("tokenmeter_quota_decisions_total", 'result="allowed"'),
                             ("tokenmeter_quota_reservations_closed_total", 'how="release"'),
                             ("tokenmeter_ingest_events_rejected_total", "reason=")):
            if not metric_value(shard_text, name, labels):
                oc.log("FAIL: shard exposition has no %s{%s} > 0" % (name, labels))
                ok = False
    if not ok:
        oc.fail("exposition lint failed (expositions kept in %s)" % workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    oc.log("PASS: shard and sidecar expositions pass promtool check metrics")


if __name__ == "__main__":
    main()
