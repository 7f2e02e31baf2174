#!/usr/bin/python3
"""Structure checks of the Grafana dashboards, and their queries for the live test.

  dashboards_lint.py DIR            checks every DIR/*.json (exit 1 with one line per finding):
      provisioning-ready (no __inputs, a `datasource` variable of type datasource/prometheus,
      every panel and query on ${datasource}), unique uids and panel ids, panels inside the
      24-column grid without overlaps, every range selector of rate()/irate() on
      $__rate_interval and of increase() on $__rate_interval / $__range / 24h, every $variable
      defined, the three expected dashboards present.
  dashboards_lint.py DIR --queries  prints the queries as JSON lines for promql_check.py:
      {"source": "<file> panel <id> <title> [<refId>]", "expr": ...}
      {"source": "<file> variable <name>", "expr": ...}     (label_values(...) as a series query)
"""
import glob
import json
import os
import re
import sys

EXPECTED_TITLES = {"tokenmeter — usage & cost", "tokenmeter — quota enforcement",
                   "tokenmeter — pipeline health"}
DS = {"type": "prometheus", "uid": "${datasource}"}
BUILTINS = {"__rate_interval", "__range", "__range_s", "__range_ms", "__interval",
            "__interval_ms"}
FUNC_RANGE = re.compile(r"\b(rate|irate|increase|deriv|delta)\s*\(")
VAR = re.compile(r"\$\{?(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*(\w+)\)$")


def range_selectors(expr):
    """Yields (function, range) for every function(...[range]) call in expr."""
    for m in FUNC_RANGE.finditer(expr):
        depth, i = 1, m.end()
        while i < len(expr) and depth:
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        inner = expr[m.end():i - 1]
        ranges = re.findall(r"\[([^\]]+)\]\s*$", inner.strip())
        yield m.group(1), ranges[0] if ranges else None


def lint_panel(name, panel, variables, out):
    where = "%s panel %s %r" % (name, panel.get("id"), panel.get("title"))
    if panel.get("datasource") != DS:
        out.append("%s: datasource is %r, want %r" % (where, panel.get("datasource"), DS))
    targets = panel.get("targets") or []
    if not targets:
        out.append("%s: no queries" % where)
    for t in targets:
        expr = t.get("expr", "")
        if t.get("datasource") != DS:
            out.append("%s [%s]: query datasource is not ${datasource}" % (where, t.get("refId")))
        if not expr.strip():
            out.append("%s [%s]: empty expr" % (where, t.get("refId")))
        for func, rng in range_selectors(expr):
            allowed = {"$__rate_interval"} if func in ("rate", "irate") else {
                "$__rate_interval", "$__range", "24h"}
            if rng not in allowed:
                out.append("%s [%s]: %s() over [%s], want one of %s" %
                           (where, t.get("refId"), func, rng, sorted(allowed)))
        for var in VAR.findall(expr):
            if var not in variables and var not in BUILTINS:
                out.append("%s [%s]: undefined variable $%s" % (where, t.get("refId"), var))


def lint_grid(name, panels, out):
    cells = {}
    for p in panels:
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy"):
            out.append("%s panel %s: gridPos %r" % (name, p.get("id"), g))
            continue
        if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
            out.append("%s panel %s: outside the 24-column grid" % (name, p.get("id")))
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    out.append("%s panels %s and %s overlap" % (name, cells[(x, y)], p["id"]))
                    return
                cells[(x, y)] = p.get("id")


def lint(path, out, seen_uids):
    name = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    if "__inputs" in d or "__requires" in d:
        out.append("%s: has __inputs/__requires (not provisioning-ready)" % name)
    uid = d.get("uid", "")
    if not uid or len(uid) > 40 or uid in seen_uids:
        out.append("%s: uid %r missing, longer than 40 or not unique" % (name, uid))
    seen_uids.add(uid)
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        out.append("%s: no variable `datasource` of type datasource / prometheus" % name)
    for v in variables.values():
        if v.get("type") == "query":
            if v.get("datasource") != DS:
                out.append("%s variable %s: datasource is not ${datasource}" % (name, v["name"]))
            if not LABEL_VALUES.match(v.get("query", "")):
                out.append("%s variable %s: query is not label_values(...)" % (name, v["name"]))
    panels = d.get("panels", [])
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        out.append("%s: duplicate panel ids" % name)
    lint_grid(name, panels, out)
    for p in panels:
        if p.get("type") == "row":
            if p.get("panels"):
                out.append("%s row %s: collapsed panels are not checked; keep rows open" %
                           (name, p.get("id")))
            continue
        if not p.get("title"):
            out.append("%s panel %s: no title" % (name, p.get("id")))
        lint_panel(name, p, variables, out)
    return d


def queries(path):
    name = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    for p in d.get("panels", []):
        for t in p.get("targets", []):
            yield {"source": "%s panel %s %s [%s]" % (name, p["id"], p["title"], t["refId"]),
                   "expr": t["expr"], "instant": bool(t.get("instant"))}
    for v in d.get("templating", {}).get("list", []):
        m = LABEL_VALUES.match(v.get("query", "")) if v.get("type") == "query" else None
        if m:
            yield {"source": "%s variable %s" % (name, v["name"]),
                   "expr": "count by (%s) (%s)" % (m.group(2), m.group(1)), "instant": True}


def main():
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--queries"):
        sys.exit(__doc__)
    paths = sorted(glob.glob(os.path.join(sys.argv[1], "*.json")))
    if len(sys.argv) == 3:
        for path in paths:
            for q in queries(path):
                print(json.dumps(q, ensure_ascii=False))
        return
    out, uids, titles = [], set(), set()
    for path in paths:
        titles.add(lint(path, out, uids).get("title"))
    if titles != EXPECTED_TITLES:
        out.append("dashboards: titles %s, want %s" % (sorted(titles), sorted(EXPECTED_TITLES)))
    for line in out:
        print("dashboards_lint: " + line)
    n = sum(len(list(queries(p))) for p in paths)
    print("dashboards_lint: %d dashboards, %d queries, %d findings" % (len(paths), n, len(out)))
    sys.exit(1 if out else 0)


if __name__ == "__main__":
    main()
