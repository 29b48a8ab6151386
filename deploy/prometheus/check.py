#!/usr/bin/env python3
"""Checks the monitoring files with promtool (Debian's `prometheus` package):

1. `promtool check rules` on deploy/prometheus/hookrelay.rules.yml;
2. `promtool test rules` on hookrelay.rules.test.yml, each expected alert's
   description filled in from the rules file (static text: the tests spell
   out labels, firing times and the templated summaries);
3. every alert of the rules file fires in at least one test;
4. every PromQL expression of the Grafana dashboard (deploy/grafana/) parses:
   they are written into a rules file as recording rules for promtool.

Needs python3-yaml. Exits non-zero on the first failure.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
RULES = os.path.join(HERE, "hookrelay.rules.yml")
TESTS = os.path.join(HERE, "hookrelay.rules.test.yml")
DASHBOARD = os.path.join(HERE, "..", "grafana", "hookrelay.json")
# Grafana's variables, as a query would be run.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promtool(*args):
    print("+ promtool", " ".join(args), flush=True)
    subprocess.run(["promtool", *args], check=True)


def alerts(rules):
    return {
        rule["alert"]: rule
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def check_rules():
    promtool("check", "rules", RULES)
    with open(RULES) as file:
        by_name = alerts(yaml.safe_load(file))
    with open(TESTS) as file:
        tests = yaml.safe_load(file)
    fired = set()
    for test in tests["tests"]:
        for case in test["alert_rule_test"]:
            name = case["alertname"]
            if name not in by_name:
                sys.exit(f"{TESTS}: no alert {name} in the rules file")
            description = by_name[name]["annotations"]["description"]
            if "{{" in description:
                sys.exit(f"{name}: a description must be static text (the summary is templated)")
            for alert in case.get("exp_alerts") or []:
                alert.setdefault("exp_annotations", {})["description"] = description
                fired.add(name)
    never = sorted(set(by_name) - fired)
    if never:
        sys.exit(f"these alerts fire in no test of {TESTS}: {', '.join(never)}")
    with tempfile.TemporaryDirectory() as work:
        tests["rule_files"] = [RULES]
        filled = os.path.join(work, "tests.yml")
        with open(filled, "w") as file:
            json.dump(tests, file)  # JSON is YAML
        promtool("test", "rules", filled)
    print(f"{len(by_name)} alerts, each fires in a test")


def dashboard_expressions(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from dashboard_expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_expressions(item)


def check_dashboard():
    with open(DASHBOARD) as file:
        dashboard = json.load(file)
    expressions = list(dashboard_expressions(dashboard))
    if not expressions:
        sys.exit(f"{DASHBOARD}: no expression found")
    rules = []
    for n, expr in enumerate(expressions):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        if "$" in re.sub(r"\{\{.*?\}\}", "", expr):
            sys.exit(f"{DASHBOARD}: an unknown Grafana variable in {expr!r}")
        rules.append({"record": f"dashboard:expr_{n}", "expr": expr})
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "dashboard.rules.yml")
        with open(path, "w") as file:
            json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, file)
        promtool("check", "rules", path)
    print(f"{len(expressions)} dashboard expressions parse")


if __name__ == "__main__":
    check_rules()
    check_dashboard()
