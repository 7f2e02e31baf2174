#!/usr/bin/python3
"""A real Prometheus server scraping a real cluster proves the dashboards and rules.

Starts 3 aggregator shards (policies: deploy/local/policies.yaml plus a shadow limit for
umbrella), a sidecar, a Prometheus server (127.0.0.1, scrape and rule interval 1 s, the
project's rule files with every `for:` shortened to 5 s) and steady traffic through the
sidecar (tm_client.py traffic). Then, each step bounded in time:
  1. every scrape target is up;
  2. the alert TokenmeterQuotaDenialSpike is inactive while budgets hold;
  3. the budget of the tokenmaxxing team (acme/agents, policy acme-agents-daily-tokens) is
     lowered in the policy file (atomic rename; the shards hot-reload it): its reservations are
     denied and the alert fires;
  4. every query of every dashboard panel and variable, and every recording rule, parses and
     returns at least one series with a finite value (Grafana variables substituted:
     $__rate_interval=15s, $__range=5m, $__range_s=300, multi-value variables = .*);
     every rule of the loaded files is healthy;
  5. the top-spender panel's first entry is acme / agents.

Usage: prometheus_integration_test.py --aggregator BIN --sidecar BIN [--workdir DIR]
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

sys.dont_write_bytecode = True  # No __pycache__ in the source tree.
import obs_cluster as oc  # noqa: E402

SUBSTITUTIONS = [("$__rate_interval", "15s"), ("$__range_s", "300"), ("$__range", "5m"),
                 ("$__interval", "5s")]
ALERT = "TokenmeterQuotaDenialSpike"


def write_policies(path, agents_daily_tokens=None):
    """deploy/local/policies.yaml + a shadow limit for umbrella; optionally a lowered budget."""
    with open(os.path.join(oc.ROOT, "deploy", "local", "policies.yaml")) as f:
        doc = yaml.safe_load(f)
    doc["policies"].append({"id": "obs-test-umbrella-shadow", "selector": {"tenant": "umbrella"},
                            "limits": [{"metric": "requests", "window": "minute", "amount": 1}],
                            "mode": "shadow"})
    if agents_daily_tokens is not None:
        policy = next(p for p in doc["policies"] if p["id"] == "acme-agents-daily-tokens")
        limit = next(lim for lim in policy["limits"] if lim["metric"] == "total_tokens")
        limit["amount"] = agents_daily_tokens
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    os.rename(tmp, path)  # Atomic: a shard never reads a half-written file.


def test_rule_files(workdir):
    """Copies of the project's rule files with every `for:` at 5 s (alerts fire in a test)."""
    out = []
    for name in ("tokenmeter-rules.yaml", "tokenmeter-alerts.yaml"):
        with open(os.path.join(oc.ROOT, "deploy", "prometheus", name)) as f:
            text = f.read()
        path = os.path.join(workdir, name)
        with open(path, "w") as f:
            f.write(re.sub(r"^(\s+)for: \S+$", r"\1for: 5s", text, flags=re.M))
        out.append(path)
    return out


def substitute(expr):
    for var, value in SUBSTITUTIONS:
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # Template variables: "All".


def dashboard_queries():
    r = subprocess.run([oc.PYTHON, os.path.join(oc.HERE, "dashboards_lint.py"),
                        os.path.join(oc.ROOT, "deploy", "grafana", "dashboards"), "--queries"],
                       stdout=subprocess.PIPE, text=True, check=True, timeout=60)
    return [json.loads(line) for line in r.stdout.splitlines()]


def rule_queries():
    out = []
    with open(os.path.join(oc.ROOT, "deploy", "prometheus", "tokenmeter-rules.yaml")) as f:
        for group in yaml.safe_load(f)["groups"]:
            for rule in group["rules"]:
                out.append({"source": "rule %s" % rule["record"], "expr": rule["expr"]})
                out.append({"source": "recorded %s" % rule["record"], "expr": rule["record"]})
    return out


def check_query(c, q, verbose=False):
    """'' if the query returns a series with a finite value, else why not."""
    body = c.api("query", query=substitute(q["expr"]))
    if body.get("status") != "success":
        return "error %s: %s" % (body.get("errorType"), body.get("error"))
    result = body["data"]["result"]
    if body["data"]["resultType"] == "scalar":
        result = [{"value": result}]
    finite = [s for s in result if math.isfinite(float(s["value"][1]))]
    if verbose:
        oc.log("  %3d series (%d finite)  %s" % (len(result), len(finite), q["source"]))
    if not result:
        return "no data"
    if not finite:
        return "only NaN/Inf (%d series)" % len(result)
    return ""


def alert_state(c):
    for a in c.api("alerts")["data"]["alerts"]:
        if a["labels"]["alertname"] == ALERT:
            return a["state"]
    return "inactive"


def wait_targets_up(c, want):
    def all_up():
        active = c.api("targets")["data"]["activeTargets"]
        health = [(t["scrapeUrl"], t["health"]) for t in active]
        return len(active) == want and all(h == "up" for _, h in health) and health
    health = oc.wait_for("%d targets up" % want, all_up, 60)
    oc.log("targets up: %s" % [u for u, _ in health])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--aggregator", required=True)
    p.add_argument("--sidecar", required=True)
    p.add_argument("--workdir", default="")
    args = p.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="tokenmeter-obs-prom-")
    policies = os.path.join(workdir, "policies.yaml")
    write_policies(policies)
    failures = []
    with oc.Cluster(workdir, args.aggregator, args.sidecar) as c:
        c.start_shards(3, policies)
        c.start_sidecar()
        c.start_prometheus(test_rule_files(workdir))
        stop_file = os.path.join(workdir, "stop-traffic")
        traffic = c.client("traffic", "--sidecar", c.sidecar_addr(), "--shards",
                           c.shard_addrs(), "--duration", "540", "--stop-file", stop_file,
                           background=True)
        wait_targets_up(c, 4)
        oc.wait_for("usage and decisions in Prometheus", lambda: check_query(
            c, {"expr": 'sum(tokenmeter_usage_requests_total) > 0 and '
                        'sum(tokenmeter_quota_decisions_total{result="allowed"}) > 0'}) == "", 90)
        # Step 2: budgets hold, the alert is quiet (20 s of traffic in the 5 m windows first).
        oc.wait_for("20 s of traffic", lambda: check_query(
            c, {"expr": "sum(count_over_time(tokenmeter_build_info[5m])) >= 80"}) == "", 120)
        state = alert_state(c)
        oc.log("%s before the budget is lowered: %s" % (ALERT, state))
        if state != "inactive":
            failures.append("%s is %s before any budget was crossed" % (ALERT, state))
        # Step 3: cross the agents team's budget.
        write_policies(policies, agents_daily_tokens=1)
        oc.log("lowered acme-agents-daily-tokens to 1 token/day")
        try:
            oc.wait_for("%s firing" % ALERT, lambda: alert_state(c) == "firing", 240, interval=1)
            oc.log("PASS: %s fires after the budget is crossed" % ALERT)
        except TimeoutError as e:
            failures.append(str(e))
            print(json.dumps(c.api("query", query="op:tokenmeter_quota_denied:ratio_rate5m"),
                             indent=1))
        # Step 4: every query returns data.
        queries = dashboard_queries() + rule_queries()
        bad = [(q["source"], why) for q in queries for why in [check_query(c, q, True)] if why]
        # Negative controls: the checker must see through a misspelt metric and bad PromQL.
        for expr in ("sum(rate(tokenmeter_usage_tokenz_total[$__rate_interval]))", "sum(rate("):
            if not check_query(c, {"expr": expr}):
                failures.append("negative control %r returned data" % expr)
        oc.log("%d dashboard and rule queries, %d without data" % (len(queries), len(bad)))
        for source, why in bad:
            failures.append("%s: %s" % (source, why))
        for group in c.api("rules")["data"]["groups"]:
            for rule in group["rules"]:
                if rule.get("health") != "ok":
                    failures.append("rule %s: health %s %s" % (
                        rule["name"], rule.get("health"), rule.get("lastError", "")))
        # Step 5: the tokenmaxxing team tops the spenders.
        top = c.api("query", query=substitute(next(
            q["expr"] for q in dashboard_queries() if "Top 10 teams" in q["source"])))
        ranked = sorted(top["data"]["result"], key=lambda s: -float(s["value"][1]))
        oc.log("top spenders: %s" % [(s["metric"].get("tenant"), s["metric"].get("team"),
                                      round(float(s["value"][1]), 4)) for s in ranked])
        if not ranked or (ranked[0]["metric"].get("tenant"), ranked[0]["metric"].get("team")) \
                != ("acme", "agents"):
            failures.append("the top-spender panel does not show acme / agents first")
        open(stop_file, "w").close()
        oc.wait_for("traffic client to stop", lambda: not traffic.alive(), 30)
    for f in failures:
        oc.log("FAIL: " + f)
    if failures:
        oc.fail("%d failures (logs kept in %s)" % (len(failures), workdir))
    shutil.rmtree(workdir, ignore_errors=True)
    oc.log("PASS: every dashboard query and recording rule returns data; %s fires" % ALERT)
    sys.exit(0)


if __name__ == "__main__":
    main()
