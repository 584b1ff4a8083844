#!/usr/bin/env python3
"""Checks of deploy/ that promtool and amtool do not make (run by scripts/check-deploy.sh).

  deploy_lint.py coverage      every alert of alerts.yml has a promtool test case where
                               it fires and one where it does not
  deploy_lint.py board-rules   prints the Grafana boards' queries as a rule file, so that
                               `promtool check rules` parses every one of them
"""

import glob
import json
import os
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ALERTS = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
TESTS = os.path.join(ROOT, "deploy/prometheus/tests/*.yml")
BOARDS = os.path.join(ROOT, "deploy/grafana/dashboards/*.json")


def alert_names():
    with open(ALERTS) as f:
        doc = yaml.safe_load(f)
    return [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]


def coverage():
    fires, quiet = set(), set()
    for path in sorted(glob.glob(TESTS)):
        with open(path) as f:
            doc = yaml.safe_load(f)
        for test in doc.get("tests", []):
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    missing = []
    for name in alert_names():
        if name not in fires:
            missing.append(f"{name}: no test case where it fires")
        if name not in quiet:
            missing.append(f"{name}: no test case where it does not fire (exp_alerts: [])")
    for m in missing:
        print(f"deploy_lint: {m}", file=sys.stderr)
    if missing:
        sys.exit(1)
    print(f"deploy_lint: {len(alert_names())} alerts, each tested firing and not firing")


def board_rules():
    rules = []
    for path in sorted(glob.glob(BOARDS)):
        with open(path) as f:
            board = json.load(f)
        name = os.path.basename(path)
        queries = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
        queries += [(f"variable {v['name']}", v["definition"]) for v in board["templating"]["list"]]
        for i, (title, expr) in enumerate(queries):
            if expr.startswith("label_values("):
                # label_values(<selector>, label): the selector must parse.
                expr = expr[len("label_values("):].rsplit(",", 1)[0]
            expr = expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")
            rules.append({"record": f"board:{name.split('.')[0].replace('-', '_')}:q{i}", "expr": expr,
                          "labels": {"panel": title}})
    print(yaml.safe_dump({"groups": [{"name": "grafana-boards", "rules": rules}]}, sort_keys=False))


if __name__ == "__main__":
    {"coverage": coverage, "board-rules": board_rules}[sys.argv[1] if len(sys.argv) > 1 else ""]()
