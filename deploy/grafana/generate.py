#!/usr/bin/env python3
"""Writes the tokenmeter Grafana dashboards (deploy/grafana/dashboards/*.json).

The JSON files are what Grafana loads (file provisioning or import); this script is their
source: edit it, run it, commit both. `generate.py --check` fails when a JSON file differs from
what the script writes (run by the observability tests).

Every dashboard: a `datasource` variable of type prometheus (no `__inputs`, so it provisions
as-is), panels querying `${datasource}`, rates over `$__rate_interval`, totals over `$__range`.
"""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")

# Colours of quota results, shared by every panel that splits by result.
RESULT_COLOURS = {"allowed": "green", "denied": "red", "shadow_denied": "orange",
                  "error": "purple"}


# ---- targets, fields, panels ------------------------------------------------------------------

def target(expr, legend="", ref="A", instant=False):
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend,
         "range": not instant, "refId": ref}
    if instant:
        t["instant"] = True
        t["format"] = "table"
    return t


def thresholds(*steps):
    """steps: (value, colour) pairs after the base colour, e.g. (0.8, "orange")."""
    return {"mode": "absolute",
            "steps": [{"color": "green", "value": None}] +
                     [{"color": c, "value": v} for v, c in steps]}


def defaults(unit, decimals=None, minimum=None, custom=None, color_mode="palette-classic",
             steps=()):
    d = {"color": {"mode": color_mode}, "thresholds": thresholds(*steps), "unit": unit}
    if decimals is not None:
        d["decimals"] = decimals
    if minimum is not None:
        d["min"] = minimum
    if custom is not None:
        d["custom"] = custom
    return d


def colour_overrides(colours):
    return [{"matcher": {"id": "byName", "options": name},
             "properties": [{"id": "color", "value": {"fixedColor": colour, "mode": "fixed"}}]}
            for name, colour in colours.items()]


def timeseries(title, description, targets, unit, stack=False, colours=None, minimum=0,
               decimals=None):
    custom = {
        "axisBorderShow": False, "axisCenteredZero": False, "axisColorMode": "text",
        "axisLabel": "", "axisPlacement": "auto", "barAlignment": 0, "drawStyle": "line",
        "fillOpacity": 15 if stack else 5, "gradientMode": "none",
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        "insertNulls": False, "lineInterpolation": "linear", "lineWidth": 1, "pointSize": 4,
        "scaleDistribution": {"type": "linear"}, "showPoints": "never", "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": "off"},
    }
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults(unit, decimals, minimum, custom),
                        "overrides": colour_overrides(colours or {})},
        "options": {
            "legend": {"calcs": ["mean", "lastNotNull", "max"], "displayMode": "table",
                       "placement": "bottom", "showLegend": True, "sortBy": "Mean",
                       "sortDesc": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def stat(title, description, expr, unit, decimals=None, steps=(), graph=True):
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults(unit, decimals, None, None, "thresholds", steps),
                        "overrides": []},
        "options": {
            "colorMode": "value", "graphMode": "area" if graph else "none",
            "justifyMode": "auto", "orientation": "auto", "percentChangeColorMode": "standard",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showPercentChange": False, "textMode": "auto", "wideLayout": True,
        },
        "targets": [target(expr)],
    }


def bargauge(title, description, expr, legend, unit, decimals=2):
    return {
        "type": "bargauge", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults(unit, decimals, 0, None, "continuous-GrYlRd"),
                        "overrides": []},
        "options": {
            "displayMode": "gradient", "legend": {"calcs": [], "displayMode": "list",
                                                  "placement": "bottom", "showLegend": False},
            "maxVizHeight": 300, "minVizHeight": 16, "minVizWidth": 8, "namePlacement": "auto",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True, "sizing": "auto", "valueMode": "color",
        },
        "targets": [dict(target(expr, legend, instant=True), format="time_series")],
    }


def table(title, description, expr, unit, hide=("Time",), decimals=2):
    custom = {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": False,
              "inspect": False}
    return {
        "type": "table", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {
            "defaults": defaults(unit, decimals, None, custom, "thresholds"),
            "overrides": [{"matcher": {"id": "byName", "options": "Value"},
                           "properties": [{"id": "custom.cellOptions",
                                           "value": {"type": "gauge", "mode": "gradient"}}]}],
        },
        "options": {"cellHeight": "sm", "frameIndex": 0, "showHeader": True,
                    "sortBy": [{"desc": True, "displayName": "Value"}]},
        "targets": [target(expr, instant=True)],
        "transformations": [{"id": "organize",
                             "options": {"excludeByName": {name: True for name in hide}}}],
    }


# ---- layout -----------------------------------------------------------------------------------

class Layout:
    """Places panels left to right in rows of 24 columns; a row() starts a titled section."""

    def __init__(self):
        self.panels, self.x, self.y, self.row_h, self.next_id = [], 0, 0, 0, 1

    def _newline(self):
        self.y += self.row_h
        self.x, self.row_h = 0, 0

    def row(self, title):
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": self.next_id, "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.next_id += 1
        self.y += 1

    def add(self, panel, w, h=8):
        if self.x + w > 24:
            self._newline()
        panel["id"] = self.next_id
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)


# ---- variables and dashboard ------------------------------------------------------------------

def datasource_var():
    return {"name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {"selected": False, "text": "default",
                                               "value": "default"},
            "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False}


def query_var(name, label, query):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": query, "refresh": 2, "regex": "", "sort": 1,
            "hide": 0, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [], "skipUrlSync": False}


def dashboard(uid, title, description, variables, layout):
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [{"asDropdown": True, "icon": "external link", "includeVars": False,
                   "keepTime": True, "tags": ["tokenmeter"], "targetBlank": False,
                   "title": "tokenmeter", "tooltip": "", "type": "dashboards", "url": ""}],
        "panels": layout.panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["tokenmeter"],
        "templating": {"list": [datasource_var()] + variables},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ---- dashboards -------------------------------------------------------------------------------

def usage_dashboard():
    s = 'tenant=~"$tenant", team=~"$team", model=~"$model"'
    cost = "tokenmeter_usage_cost_micro_usd_total{%s}" % s
    tokens = "tokenmeter_usage_tokens_total{%s}" % s
    calls = "tokenmeter_usage_requests_total{%s}" % s
    rate = "[$__rate_interval]"
    usd_h = "currencyUSD"
    lay = Layout()
    lay.row("Spend")
    lay.add(stat("Spend rate (USD/hour)", "Cost of the calls counted, at the current rate.",
                 "sum(rate(%s%s)) * 3600 / 1e6" % (cost, rate), usd_h, 2), 4, 5)
    lay.add(stat("Spend in the time range (USD)", "Cost counted in the dashboard's time range.",
                 "sum(increase(%s[$__range])) / 1e6" % cost, usd_h, 2, graph=False), 4, 5)
    lay.add(stat("Projected 30-day spend (USD)",
                 "The time range's average spend rate extrapolated to 30 days.",
                 "sum(increase(%s[$__range])) / $__range_s * 86400 * 30 / 1e6" % cost, usd_h, 0,
                 graph=False), 4, 5)
    lay.add(stat("Tokens per second", "Input + output tokens (cached and reasoning are subsets).",
                 'sum(rate(tokenmeter_usage_tokens_total{%s, type=~"input|output"}%s))'
                 % (s, rate), "short", 1), 4, 5)
    lay.add(stat("LLM calls per second", "Calls counted (reported events and committed "
                 "reservations).", "sum(rate(%s%s))" % (calls, rate), "reqps", 2), 4, 5)
    lay.add(stat("Prompt cache share", "Share of input tokens served from a prompt cache "
                 "(billed at the cached-input price).",
                 'sum(rate(tokenmeter_usage_tokens_total{%s, type="cached_input"}%s)) / '
                 'sum(rate(tokenmeter_usage_tokens_total{%s, type="input"}%s))'
                 % (s, rate, s, rate), "percentunit", 1), 4, 5)
    lay.row("Top spenders")
    lay.add(bargauge("Top 10 teams by spend in the time range (USD)",
                     "Teams that spent most in the dashboard's time range: the tokenmaxxing "
                     "teams are here.",
                     "topk(10, sum by (tenant, team) (increase(%s[$__range])) / 1e6)" % cost,
                     "{{tenant}} / {{team}}", usd_h), 12, 10)
    lay.add(bargauge("Top 10 models by spend in the time range (USD)",
                     "Models that cost most in the dashboard's time range.",
                     "topk(10, sum by (model) (increase(%s[$__range])) / 1e6)" % cost,
                     "{{model}}", usd_h), 12, 10)
    lay.add(table("Top 20 spenders by tenant, team and model (USD in the time range)",
                  "The biggest tenant / team / model combinations of the time range.",
                  "topk(20, sum by (tenant, team, model) (increase(%s[$__range])) / 1e6)" % cost,
                  usd_h), 24, 9)
    lay.row("Burn")
    lay.add(timeseries("Spend rate by tenant (USD/hour)", "Cost per hour at the current rate.",
                       [target("sum by (tenant) (rate(%s%s)) * 3600 / 1e6" % (cost, rate),
                               "{{tenant}}")], usd_h, stack=True, decimals=2), 12)
    lay.add(timeseries("Spend rate by team (USD/hour)", "Cost per hour at the current rate.",
                       [target("sum by (tenant, team) (rate(%s%s)) * 3600 / 1e6" % (cost, rate),
                               "{{tenant}} / {{team}}")], usd_h, stack=True, decimals=2), 12)
    lay.add(timeseries("Trailing 24 h spend by team (USD)",
                       "Spend of the last 24 hours at each point: compare with daily budgets "
                       "(policies with window: day).",
                       [target("sum by (tenant, team) (increase(%s[24h])) / 1e6" % cost,
                               "{{tenant}} / {{team}}")], usd_h, decimals=2), 12)
    lay.add(timeseries("Spend rate by model (USD/hour)", "Cost per hour at the current rate.",
                       [target("sum by (model) (rate(%s%s)) * 3600 / 1e6" % (cost, rate),
                               "{{model}}")], usd_h, stack=True, decimals=2), 12)
    lay.row("Tokens and calls")
    lay.add(timeseries("Tokens per second by token type",
                       "gen_ai token types: cached_input is part of input, reasoning part of "
                       "output.",
                       [target("sum by (type) (rate(%s%s))" % (tokens, rate), "{{type}}")],
                       "short"), 12)
    lay.add(timeseries("Tokens per second by model", "Input + output tokens.",
                       [target('sum by (model) (rate(tokenmeter_usage_tokens_total{%s, '
                               'type=~"input|output"}%s))' % (s, rate), "{{model}}")],
                       "short", stack=True), 12)
    lay.add(timeseries("Tokens per second by team", "Input + output tokens.",
                       [target('sum by (tenant, team) (rate(tokenmeter_usage_tokens_total{%s, '
                               'type=~"input|output"}%s))' % (s, rate), "{{tenant}} / {{team}}")],
                       "short", stack=True), 12)
    lay.add(timeseries("LLM calls per second by team", "Calls counted per team.",
                       [target("sum by (tenant, team) (rate(%s%s))" % (calls, rate),
                               "{{tenant}} / {{team}}")], "reqps", stack=True), 12)
    lay.add(timeseries("Unpriced calls per second",
                       "Calls of a provider/model missing from the price table: tokens "
                       "counted, cost not. Should be 0.",
                       [target("sum by (instance) (rate(tokenmeter_usage_unpriced_requests_total"
                               "[$__rate_interval]))", "{{instance}}")], "reqps"), 12)
    lay.add(timeseries("Usage updates folded into \"other\"",
                       "Updates of label sets past --usage-metric-max-series, counted under "
                       "\"other\". Should be 0.",
                       [target("sum by (instance, family) (rate(tokenmeter_metrics_folded_updates"
                               "_total[$__rate_interval]))", "{{instance}} {{family}}")],
                       "short"), 12)
    return dashboard(
        "tokenmeter-usage", "tokenmeter — usage & cost",
        "Token usage and cost by tenant, team and model, top spenders and burn.",
        [query_var("tenant", "Tenant", "label_values(tokenmeter_usage_requests_total, tenant)"),
         query_var("team", "Team",
                   'label_values(tokenmeter_usage_requests_total{tenant=~"$tenant"}, team)'),
         query_var("model", "Model",
                   'label_values(tokenmeter_usage_requests_total{tenant=~"$tenant"}, model)')],
        lay)


def ratio(result, sel, by=""):
    """Share of decisions with `result` (0 when there is none)."""
    total = "sum%s (rate(tokenmeter_quota_decisions_total{%s}[$__rate_interval]))" % (by, sel)
    part = ('sum%s (rate(tokenmeter_quota_decisions_total{%s, result="%s"}[$__rate_interval]))'
            % (by, sel, result))
    return "(%s or %s * 0) / %s" % (part, total, total)


def quota_dashboard():
    i = 'instance=~"$instance"'
    dec = "tokenmeter_quota_decisions_total{%s}" % i
    rate = "[$__rate_interval]"
    lay = Layout()
    lay.row("Decisions")
    lay.add(stat("Quota decisions per second", "Check and Reserve calls decided by the shards.",
                 "sum(rate(%s%s))" % (dec, rate), "reqps", 1), 4, 5)
    lay.add(stat("Reservations denied", "Share of Reserve calls denied by an enforced limit.",
                 ratio("denied", i + ', op="reserve"'), "percentunit", 1,
                 ((0.05, "orange"), (0.25, "red"))), 4, 5)
    lay.add(stat("Shadow-denied", "Share of decisions a shadow-mode policy would have denied "
                 "(allowed all the same).", ratio("shadow_denied", i), "percentunit", 1,
                 ((0.05, "orange"),)), 4, 5)
    lay.add(stat("Open reservations", "Reservations holding budget now.",
                 "sum(tokenmeter_quota_open_reservations{%s})" % i, "short", 0), 4, 5)
    lay.add(stat("Fallback decisions per second", "Quota answers sidecars gave from the "
                 "failure mode because the shard was unreachable. Should be 0.",
                 "sum(rate(tokenmeter_sidecar_quota_fallback_total{%s}%s))" % (i, rate),
                 "reqps", 2, ((0.001, "red"),)), 4, 5)
    lay.add(stat("Policies in force", "Policies of the policy file plus Admin overrides.",
                 "max(tokenmeter_policy_policies{%s})" % i, "short", 0, graph=False), 4, 5)
    lay.add(timeseries("Decisions per second by result",
                       "allowed, denied (an enforced limit), shadow_denied (a shadow limit "
                       "would deny), error.",
                       [target("sum by (result) (rate(%s%s))" % (dec, rate), "{{result}}")],
                       "reqps", stack=True, colours=RESULT_COLOURS), 12)
    lay.add(timeseries("Decisions per second by operation and result", "check / reserve.",
                       [target("sum by (op, result) (rate(%s%s))" % (dec, rate),
                               "{{op}} {{result}}")], "reqps"), 12)
    lay.add(timeseries("Decisions per second by team and result",
                       "Which team is allowed and which is denied: a tokenmaxxing team shows "
                       "up as a denied series.",
                       [target("sum by (tenant, team, result) (rate(tokenmeter_quota_scope_"
                               "decisions_total%s))" % rate, "{{tenant}}/{{team}} {{result}}")],
                       "reqps"), 12)
    lay.add(bargauge("Budget burn: top 20 limits (used + held / limit)",
                     "Each limit's burn at its last decision; 100% = exhausted (enforced "
                     "limits deny from there).",
                     "topk(20, max by (policy, scope, metric, window) "
                     "(tokenmeter_quota_limit_used_ratio))",
                     "{{policy}} {{scope}} {{metric}}/{{window}}", "percentunit"), 12, 10)
    lay.add(timeseries("Denied share by operation", "Share of decisions denied.",
                       [target(ratio("denied", i, " by (op)"), "{{op}}")], "percentunit"), 12)
    lay.add(timeseries("Shadow-denied share by operation",
                       "What enforcing the shadow-mode policies would deny.",
                       [target(ratio("shadow_denied", i, " by (op)"), "{{op}}")],
                       "percentunit"), 12)
    lay.row("Reservations")
    lay.add(timeseries("Open reservations by shard",
                       "Outstanding estimates; overshoot of a limit is bounded by them.",
                       [target("sum by (instance) (tokenmeter_quota_open_reservations{%s})" % i,
                               "{{instance}}")], "short"), 8)
    lay.add(timeseries("Reservations closed per second by how",
                       "commit, release, expire (TTL passed: abandoned calls), late_commit.",
                       [target("sum by (how) (rate(tokenmeter_quota_reservations_closed_total"
                               "{%s}%s))" % (i, rate), "{{how}}")], "reqps", stack=True), 8)
    lay.add(timeseries("Decision latency p50 / p99 by operation",
                       "Time a shard needs to decide (Reserve includes its durable write).",
                       [target("histogram_quantile(0.5, sum by (op, le) (rate(tokenmeter_quota_"
                               "decision_duration_seconds_bucket{%s}%s)))" % (i, rate),
                               "p50 {{op}}", "A"),
                        target("histogram_quantile(0.99, sum by (op, le) (rate(tokenmeter_quota_"
                               "decision_duration_seconds_bucket{%s}%s)))" % (i, rate),
                               "p99 {{op}}", "B")], "s"), 8)
    lay.row("Sidecar quota proxy")
    lay.add(timeseries("Fallback decisions per second by result",
                       "Decided by the failure mode (open = allowed unmetered, closed = denied) "
                       "because the owner shard did not answer in time.",
                       [target("sum by (result) (rate(tokenmeter_sidecar_quota_fallback_total"
                               "{%s}%s))" % (i, rate), "{{result}}")], "reqps",
                       colours=RESULT_COLOURS), 12)
    lay.add(timeseries("Quota calls forwarded and commits deferred per second",
                       "Forwarded to the owner shard; deferred = Commit/Release queued while "
                       "the shard was unreachable.",
                       [target("sum(rate(tokenmeter_sidecar_quota_forwarded_total{%s}%s))"
                               % (i, rate), "forwarded", "A"),
                        target("sum(rate(tokenmeter_sidecar_quota_deferred_total{%s}%s))"
                               % (i, rate), "deferred", "B")], "reqps"), 12)
    lay.row("Policies")
    lay.add(timeseries("Policy file loads by result", "A refused file keeps the previous "
                       "policies in force.",
                       [target("sum by (result) (increase(tokenmeter_policy_reloads_total{%s}%s))"
                               % (i, rate), "{{result}}")], "short",
                       colours={"ok": "green", "error": "red"}), 12)
    lay.add(timeseries("Policies in force by shard", "",
                       [target("max by (instance) (tokenmeter_policy_policies{%s})" % i,
                               "{{instance}}")], "short"), 12)
    return dashboard(
        "tokenmeter-quota", "tokenmeter — quota enforcement",
        "Quota decisions (allowed, denied, shadow-denied), reservations, latency and sidecar "
        "fallbacks.",
        [query_var("instance", "Instance", "label_values(tokenmeter_build_info, instance)")], lay)


def pipeline_dashboard():
    i = 'job=~"$job", instance=~"$instance"'
    rate = "[$__rate_interval]"
    lay = Layout()
    lay.row("Overview")
    lay.add(stat("Events applied per second", "Events counted by the shards (first time seen).",
                 "sum(rate(tokenmeter_ingest_events_applied_total{%s}%s))" % (i, rate), "short",
                 1), 4, 5)
    lay.add(stat("Events rejected per second", "Malformed events kept as dead letters.",
                 "sum(rate(tokenmeter_ingest_events_rejected_total{%s}%s)) or vector(0)"
                 % (i, rate), "short", 2, ((0.001, "red"),)), 4, 5)
    lay.add(stat("Events queued in sidecars", "Reported, durable, not yet acknowledged.",
                 "sum(tokenmeter_sidecar_queue_events{%s})" % i, "short", 0,
                 ((1000, "orange"), (100000, "red"))), 4, 5)
    lay.add(stat("Oldest queued event", "How far the counters lag behind the fleet.",
                 "max(tokenmeter_sidecar_queue_oldest_age_seconds{%s})" % i, "s", 1,
                 ((60, "orange"), (300, "red"))), 4, 5)
    lay.add(stat("Targets up", "Scraped processes answering.",
                 "sum(up{%s})" % i, "short", 0, graph=False), 4, 5)
    lay.add(stat("Live SST bytes (all shards)", "RocksDB data on disk.",
                 "sum(tokenmeter_storage_live_sst_bytes{%s})" % i, "bytes", 1), 4, 5)
    lay.row("Ingest (shards)")
    lay.add(timeseries("Events per second: applied, duplicate, rejected",
                       "duplicate = skipped, its event_id was already counted (a retry).",
                       [target("sum(rate(tokenmeter_ingest_events_applied_total{%s}%s))"
                               % (i, rate), "applied", "A"),
                        target("sum(rate(tokenmeter_ingest_events_duplicate_total{%s}%s))"
                               % (i, rate), "duplicate", "B"),
                        target("sum by (reason) (rate(tokenmeter_ingest_events_rejected_total"
                               "{%s}%s))" % (i, rate), "rejected: {{reason}}", "C")],
                       "short"), 12)
    lay.add(timeseries("Ingest batches per second by outcome",
                       "applied / duplicate (a resend) / gap / fenced / not_owner / invalid / "
                       "unavailable.",
                       [target("sum by (outcome) (rate(tokenmeter_ingest_batches_total{%s}%s))"
                               % (i, rate), "{{outcome}}")], "short", stack=True,
                       colours={"applied": "green", "unavailable": "red", "invalid": "purple"}),
            12)
    lay.add(timeseries("Apply latency p50 / p99 by shard",
                       "Time to make one group of batches durable (WriteBatch + WAL sync).",
                       [target("histogram_quantile(0.5, sum by (instance, le) (rate(tokenmeter_"
                               "ingest_apply_duration_seconds_bucket{%s}%s)))" % (i, rate),
                               "p50 {{instance}}", "A"),
                        target("histogram_quantile(0.99, sum by (instance, le) (rate(tokenmeter_"
                               "ingest_apply_duration_seconds_bucket{%s}%s)))" % (i, rate),
                               "p99 {{instance}}", "B")], "s"), 8)
    lay.add(timeseries("Batches per durable write (group commit)",
                       "Mean batches made durable by one write.",
                       [target("sum by (instance) (rate(tokenmeter_ingest_group_batches_sum{%s}"
                               "%s)) / sum by (instance) (rate(tokenmeter_ingest_group_batches_"
                               "count{%s}%s))" % (i, rate, i, rate), "{{instance}}")], "short"),
            8)
    lay.add(timeseries("Ingest bytes per second by shard", "",
                       [target("sum by (instance) (rate(tokenmeter_ingest_bytes_total{%s}%s))"
                               % (i, rate), "{{instance}}")], "Bps"), 8)
    lay.row("Sidecars")
    lay.add(timeseries("Queued events by sidecar", "Events durable in the local queue, not yet "
                       "acknowledged by their shard.",
                       [target("sum by (instance) (tokenmeter_sidecar_queue_events{%s})" % i,
                               "{{instance}}")], "short"), 8)
    lay.add(timeseries("Oldest queued event by sidecar", "0 when the queue is empty.",
                       [target("max by (instance) (tokenmeter_sidecar_queue_oldest_age_seconds"
                               "{%s})" % i, "{{instance}}")], "s"), 8)
    lay.add(timeseries("Queued bytes by sidecar", "",
                       [target("sum by (instance) (tokenmeter_sidecar_queue_bytes{%s})" % i,
                               "{{instance}}")], "bytes"), 8)
    lay.add(timeseries("Batches per second to each shard: sent, resent, acked",
                       "resent = sent again after a stream broke (exactly-once by seq).",
                       [target("sum by (shard) (rate(tokenmeter_sidecar_batches_sent_total{%s}"
                               "%s))" % (i, rate), "sent → shard {{shard}}", "A"),
                        target("sum by (shard) (rate(tokenmeter_sidecar_batches_resent_total{%s}"
                               "%s))" % (i, rate), "resent → shard {{shard}}", "B"),
                        target("sum by (shard) (rate(tokenmeter_sidecar_batches_acked_total{%s}"
                               "%s))" % (i, rate), "acked ← shard {{shard}}", "C")], "short"), 8)
    lay.add(timeseries("Reconnects and stream errors per second by shard", "",
                       [target("sum by (shard) (rate(tokenmeter_sidecar_reconnects_total{%s}%s))"
                               % (i, rate), "reconnects shard {{shard}}", "A"),
                        target("sum by (shard) (rate(tokenmeter_sidecar_stream_errors_total"
                               "{%s}%s))" % (i, rate), "errors shard {{shard}}", "B")], "short"),
            8)
    lay.add(timeseries("Shard streams connected", "1 when the last stream to the shard got "
                       "acknowledgements (0 also before the first batch).",
                       [target("min by (shard) (tokenmeter_sidecar_shard_connected{%s})" % i,
                               "shard {{shard}}")], "short"), 8)
    lay.add(timeseries("Report calls: events per second by result, queue-full refusals", "",
                       [target("sum by (result) (rate(tokenmeter_sidecar_report_events_total{%s}"
                               "%s))" % (i, rate), "events {{result}}", "A"),
                        target("sum(rate(tokenmeter_sidecar_report_queue_full_total{%s}%s))"
                               % (i, rate), "queue full", "B")], "short",
                       colours={"events invalid": "orange", "queue full": "red"}), 24)
    lay.row("Storage (RocksDB)")
    lay.add(timeseries("Live SST bytes by shard", "", [target(
        "sum by (instance) (tokenmeter_storage_live_sst_bytes{%s})" % i, "{{instance}}")],
        "bytes"), 6)
    lay.add(timeseries("Memtable bytes by shard", "", [target(
        "sum by (instance) (tokenmeter_storage_memtable_bytes{%s})" % i, "{{instance}}")],
        "bytes"), 6)
    lay.add(timeseries("Pending compaction bytes by shard", "Compaction debt; RocksDB stalls "
                       "writes when it grows too large.", [target(
                           "sum by (instance) (tokenmeter_storage_pending_compaction_bytes{%s})"
                           % i, "{{instance}}")], "bytes"), 6)
    lay.add(timeseries("Write stalls and write errors", "stopped = 1 while RocksDB stops "
                       "writes; errors = failed writes (disk full, I/O).",
                       [target("max by (instance) (tokenmeter_storage_write_stopped{%s})" % i,
                               "stopped {{instance}}", "A"),
                        target("sum by (instance) (rate(tokenmeter_storage_write_errors_total"
                               "{%s}%s))" % (i, rate), "errors/s {{instance}}", "B")], "short"), 6)
    lay.row("Processes")
    lay.add(table("Build info", "Version and component of every process.",
                  "max by (job, instance, component, version) (tokenmeter_build_info{%s})" % i,
                  "short", hide=("Time", "Value"), decimals=0), 24, 6)
    return dashboard(
        "tokenmeter-pipeline", "tokenmeter — pipeline health",
        "Ingest rate and latency, sidecar queues and streams, RocksDB.",
        [query_var("job", "Job", "label_values(tokenmeter_build_info, job)"),
         query_var("instance", "Instance",
                   'label_values(tokenmeter_build_info{job=~"$job"}, instance)')], lay)


DASHBOARDS = {
    "tokenmeter-usage.json": usage_dashboard,
    "tokenmeter-quota.json": quota_dashboard,
    "tokenmeter-pipeline.json": pipeline_dashboard,
}


def render(build):
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main():
    check = sys.argv[1:] == ["--check"]
    stale = []
    for name, build in DASHBOARDS.items():
        path = os.path.join(OUT_DIR, name)
        text = render(build)
        if check:
            with open(path, encoding="utf-8") as f:
                if f.read() != text:
                    stale.append(path)
        else:
            os.makedirs(OUT_DIR, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if stale:
        sys.exit("generate.py: out of date (run deploy/grafana/generate.py): " + " ".join(stale))


if __name__ == "__main__":
    main()
