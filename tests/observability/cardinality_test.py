#!/usr/bin/python3
"""Cardinality guard: 10,000 distinct users reported through a sidecar to a shard started with
--usage-metric-labels tenant,team,user,model --usage-metric-max-series 1000. Then:
  - every usage family (tokens, requests, cost) has at most 1000 series + the folded "other";
  - the "other" series exists and tokenmeter_metrics_folded_updates_total{family=...} > 0;
  - nothing is lost by folding: the requests of all series add up to the 10,000 events;
  - the (large) exposition still passes `promtool check metrics`.

Usage: cardinality_test.py --aggregator BIN --sidecar BIN [--users N] [--cap N] [--workdir DIR]
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

FAMILIES = ("tokenmeter_usage_tokens_total", "tokenmeter_usage_requests_total",
            "tokenmeter_usage_cost_micro_usd_total")


def series(text, name):
    """{label string: value} of the samples of `name`."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name), line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--aggregator", required=True)
    p.add_argument("--sidecar", required=True)
    p.add_argument("--users", type=int, default=10000)
    p.add_argument("--cap", type=int, default=1000)
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="tokenmeter-obs-card-")
    policies = os.path.join(oc.ROOT, "deploy", "local", "policies.yaml")
    failures = []
    with oc.Cluster(workdir, args.aggregator, args.sidecar) as c:
        c.start_shards(1, policies, ["--usage-metric-labels", "tenant,team,user,model",
                                     "--usage-metric-max-series", str(args.cap)])
        c.start_sidecar()
        c.client("report-users", "--sidecar", c.sidecar_addr(), "--users", str(args.users),
                 "--duration", "240", timeout=300)
        port = c.shards[0][1]

        def applied():
            s = series(oc.scrape(port), "tokenmeter_ingest_events_applied_total")
            return sum(s.values()) >= args.users
        oc.wait_for("%d events applied" % args.users, applied, 120, interval=1)
        text = oc.scrape(port)
        for fam in FAMILIES:
            s = series(text, fam)
            other = [k for k in s if 'user="other"' in k]
            oc.log("%s: %d series (cap %d), folded series: %s" % (fam, len(s), args.cap, other))
            # The token family keeps its `type` label through the fold: one "other" series
            # per token type (at most 4), the others exactly one.
            max_other = 4 if fam == "tokenmeter_usage_tokens_total" else 1
            if len(s) > args.cap + max_other:
                failures.append("%s has %d series > cap %d + %d" %
                                (fam, len(s), args.cap, max_other))
            if not 1 <= len(other) <= max_other:
                failures.append("%s: want 1..%d folded \"other\" series, got %d" %
                                (fam, max_other, len(other)))
            types = sorted(k.split('type="')[1].split('"')[0] for k in other if 'type="' in k)
            if len(types) != len(set(types)):
                failures.append("%s: the fold lost the type label: %s" % (fam, other))
        requests = sum(series(text, "tokenmeter_usage_requests_total").values())
        if requests != args.users:
            failures.append("requests of all series add up to %d, want %d" %
                            (requests, args.users))
        folded = series(text, "tokenmeter_metrics_folded_updates_total")
        oc.log("tokenmeter_metrics_folded_updates_total: %s" % folded)
        for fam in FAMILIES:
            if not folded.get('{family="%s"}' % fam, 0) > 0:
                failures.append("tokenmeter_metrics_folded_updates_total{family=\"%s\"} is not > 0"
                                % fam)
        path = os.path.join(workdir, "shard.metrics.txt")
        with open(path, "w") as f:
            f.write(text)
        with open(path) as f:
            r = subprocess.run(["promtool", "check", "metrics"], stdin=f, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        oc.log("promtool check metrics (%d bytes, %d lines): exit %d %s" %
               (len(text), text.count("\n"), r.returncode, r.stdout.strip()))
        if r.returncode != 0 or r.stdout.strip():
            failures.append("promtool check metrics has findings")
    for f in failures:
        oc.log("FAIL: " + f)
    if failures:
        oc.fail("cardinality guard (files kept in %s)" % workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    oc.log("PASS: %d users, usage series stay within the cap of %d + \"other\"" %
           (args.users, args.cap))


if __name__ == "__main__":
    main()
