#!/usr/bin/env python3
"""Checks the monitoring files with promtool (Debian's `prometheus` package):

1. `promtool check rules` on deploy/prometheus/hookrelay.rules.yml;
2. every expected alert in hookrelay.rules.test.yml spells out the rule's
   description as the rules file has it (`check.py --write` rewrites them
   from the rules file after a description changed);
3. `promtool test rules deploy/prometheus/hookrelay.rules.test.yml`, the
   command the README and the rules file name, exactly as a reader runs it;
4. every alert of the rules file fires in at least one test;
5. every PromQL expression of the Grafana dashboard (deploy/grafana/) parses:
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
                fired.add(name)
                if alert.get("exp_annotations", {}).get("description") != description:
                    sys.exit(
                        f"{TESTS}: an expected {name} does not spell out the rules file's "
                        f"description: run `python3 deploy/prometheus/check.py --write`"
                    )
    never = sorted(set(by_name) - fired)
    if never:
        sys.exit(f"these alerts fire in no test of {TESTS}: {', '.join(never)}")
    # From the repository's root, as the README says it.
    root = os.path.join(HERE, "..", "..")
    print("+ promtool test rules deploy/prometheus/hookrelay.rules.test.yml", flush=True)
    subprocess.run(
        ["promtool", "test", "rules", "deploy/prometheus/hookrelay.rules.test.yml"],
        check=True,
        cwd=root,
    )
    print(f"{len(by_name)} alerts, each fires in a test")


def write_descriptions():
    """Rewrites each expected alert's annotations in the tests file as a
    block with the summary it has and the rules file's description, keeping
    the file's comments and layout."""
    with open(RULES) as file:
        by_name = alerts(yaml.safe_load(file))
    with open(TESTS) as file:
        lines = file.read().split("\n")
    out, name, n = [], None, 0
    while n < len(lines):
        line = lines[n]
        found = re.search(r"alertname: (\w+)", line)
        if found:
            name = found.group(1)
        inline = re.match(r'^(\s*)exp_annotations: \{ summary: (".*") \}\s*$', line)
        block = re.match(r"^(\s*)exp_annotations:\s*$", line)
        if inline or block:
            indent = (inline or block).group(1)
            if inline:
                summary, n = inline.group(2), n + 1
            else:
                summary = lines[n + 1].strip()[len("summary: "):]
                n += 3  # the summary's line and the description's
            description = json.dumps(by_name[name]["annotations"]["description"], ensure_ascii=False)
            out += [
                f"{indent}exp_annotations:",
                f"{indent}  summary: {summary}",
                f"{indent}  description: {description}",
            ]
            continue
        out.append(line)
        n += 1
    with open(TESTS, "w") as file:
        file.write("\n".join(out))
    print(f"wrote the descriptions of {TESTS}")


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
    if sys.argv[1:] == ["--write"]:
        write_descriptions()
    check_rules()
    check_dashboard()
