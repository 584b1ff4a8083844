#!/usr/bin/env python3
"""Checks of deploy/ that promtool and amtool do not make (run by scripts/check-deploy.sh).

  deploy_lint.py coverage      every alert of alerts.yml has a promtool test case where
                               it fires and one where it does not
  deploy_lint.py board-rules   prints the Grafana boards' PromQL queries as a rule file, so
                               that `promtool check rules` parses every one of them
  deploy_lint.py k8s           deploy/k8s/: what the schemas do not say — Guaranteed QoS with
                               whole CPUs (requests = limits), probes on /readyz (an ingest pod's
                               on the data port) and /healthz (the control port), config and secrets mounted as files, a
                               PodDisruptionBudget per workload, the workers scaled 3..20 by
                               KEDA on croupier's backlog gauge, secrets readable by the
                               pods' user (fsGroup)
  deploy_lint.py collector     the OpenTelemetry Collector configuration: every component a
                               pipeline names is defined, logs and traces go to croupier's
                               OTLP/HTTP receiver with the bearer token, retries never give up
"""

import glob
import json
import os
import sys
import tomllib

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ALERTS = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
TESTS = os.path.join(ROOT, "deploy/prometheus/tests/*.yml")
BOARDS = os.path.join(ROOT, "deploy/grafana/dashboards/*.json")
COLLECTOR = os.path.join(ROOT, "deploy/otel-collector/config.yaml")
K8S = os.path.join(ROOT, "deploy/k8s/*.yaml")


def collector():
    with open(COLLECTOR) as f:
        doc = yaml.safe_load(f)
    errors = []
    service = doc["service"]
    for ext in service.get("extensions", []):
        if ext not in doc.get("extensions", {}):
            errors.append("extension %s is not defined" % ext)
    for name, p in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for c in p.get(kind, []):
                if c not in (doc.get(kind) or {}):
                    errors.append("pipeline %s: %s %s is not defined" % (name, kind[:-1], c))
    for signal in ("logs", "traces"):
        exporters = service["pipelines"].get(signal, {}).get("exporters", [])
        if "otlphttp/croupier" not in exporters:
            errors.append("pipeline %s does not export to croupier" % signal)
    e = doc["exporters"]["otlphttp/croupier"]
    if e.get("headers", {}).get("Authorization") != "Bearer ${env:CROUPIER_OTLP_TOKEN}":
        errors.append("the croupier exporter does not send the bearer token")
    if e.get("retry_on_failure", {}).get("max_elapsed_time") not in ("0s", 0):
        errors.append("the croupier exporter gives up retrying")
    # A batch larger than croupier's server.max_records is refused 413 (not retried).
    with open(os.path.join(os.path.dirname(COLLECTOR), "..", "croupier", "croupier.toml"), "rb") as f:
        max_records = tomllib.load(f).get("server", {}).get("max_records", 10000)
    for pname, proc in (doc.get("processors") or {}).items():
        if pname.split("/")[0] != "batch":
            continue
        cap = (proc or {}).get("send_batch_max_size", 0)
        if not cap or cap > max_records:
            errors.append("processor %s: send_batch_max_size %s is not within croupier's "
                          "server.max_records (%d)" % (pname, cap or "unset", max_records))
    storage = e.get("sending_queue", {}).get("storage")
    if storage and storage not in doc.get("extensions", {}):
        errors.append("queue storage %s is not defined" % storage)
    for err in errors:
        print("collector:", err, file=sys.stderr)
    return 1 if errors else 0


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


def prometheus(datasource):
    return (datasource or {}).get("type") == "prometheus"


def board_rules():
    rules = []
    for path in sorted(glob.glob(BOARDS)):
        with open(path) as f:
            board = json.load(f)
        name = os.path.basename(path)
        # PromQL only: the ClickHouse board's SQL is run by tests/it/grafana.rs.
        queries = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])
                   if prometheus(t.get("datasource") or p.get("datasource"))]
        queries += [(f"variable {v['name']}", v["definition"]) for v in board["templating"]["list"]
                    if prometheus(v.get("datasource"))]
        for i, (title, expr) in enumerate(queries):
            if expr.startswith("label_values("):
                # label_values(<selector>, label): the selector must parse.
                expr = expr[len("label_values("):].rsplit(",", 1)[0]
            expr = expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")
            rules.append({"record": f"board:{name.split('.')[0].replace('-', '_')}:q{i}", "expr": expr,
                          "labels": {"panel": title}})
    print(yaml.safe_dump({"groups": [{"name": "grafana-boards", "rules": rules}]}, sort_keys=False))


def k8s():
    docs = []
    for path in sorted(glob.glob(K8S)):
        with open(path) as f:
            docs += [(os.path.basename(path), d) for d in yaml.safe_load_all(f) if d]
    errors = []
    workloads = [(f, d) for f, d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    pdbs = [d for _, d in docs if d["kind"] == "PodDisruptionBudget"]
    for f, d in workloads:
        name = d["metadata"]["name"]
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"]:
            res = c.get("resources", {})
            req, lim = res.get("requests", {}), res.get("limits", {})
            if not req or req != lim:
                errors.append(f"{f}: {name}/{c['name']}: requests must equal limits (Guaranteed QoS)")
            if not str(lim.get("cpu", "")).isdigit():
                errors.append(f"{f}: {name}/{c['name']}: cpu must be a whole number of CPUs (pinned by the static policy)")
            # An ingest pod's readiness is its data port's, answered by the shards (the
            # control port's thread also runs analytics queries); liveness is the control
            # port's (the data port's answers can wait behind busy connections under load).
            ingest = "ingest" in c.get("args", [])
            for probe, path, port in (
                # An ingest pod's readiness leaves out the streams' marks, which every pod
                # shares (one full stream would take every pod out).
                ("readinessProbe", "/readyz?exclude=streams" if ingest else "/readyz", "http" if ingest else "control"),
                ("livenessProbe", "/healthz", "control"),
                ("startupProbe", "/healthz", "control"),
            ):
                got = c.get(probe, {}).get("httpGet", {})
                if got.get("path") != path or got.get("port") != port:
                    errors.append(f"{f}: {name}/{c['name']}: {probe} must be GET {path} on the {port} port")
            mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            if not any("configMap" in volumes.get(n, {}) for n in mounts):
                errors.append(f"{f}: {name}: the configuration is not mounted from a ConfigMap")
            if not any("secret" in volumes.get(n, {}) for n in mounts):
                errors.append(f"{f}: {name}: the secrets are not mounted as files")
            # A Secret's files are root's unless the pod has an fsGroup: a non-root user
            # reads them through that group, with the group's read bit in the mode.
            pod = spec.get("securityContext", {})
            own = c.get("securityContext", {})
            user = own.get("runAsUser", pod.get("runAsUser", 0))
            group = own.get("runAsGroup", pod.get("runAsGroup", user))
            for n in mounts:
                secret = volumes.get(n, {}).get("secret")
                if secret is None or user == 0:
                    continue
                if pod.get("fsGroup") != group:
                    errors.append(f"{f}: {name}: secrets are unreadable by user {user}: set fsGroup to its group")
                if not secret.get("defaultMode", 0o644) & 0o040:
                    errors.append(f"{f}: {name}: the secrets' defaultMode must let the group read them")
            cfg = next((a for a in c.get("args", []) if a.endswith(".toml")), "")
            if cfg not in mounts.values():
                errors.append(f"{f}: {name}: --config {cfg} is not a mounted file")
        labels = d["spec"]["selector"]["matchLabels"]
        if not any(p["spec"]["selector"]["matchLabels"] == labels for p in pdbs):
            errors.append(f"{f}: {name}: no PodDisruptionBudget selects it")
    scaled = [d for _, d in docs if d["kind"] == "ScaledObject"]
    workers = [d for _, d in workloads if d["metadata"]["name"] == "croupier-worker"]
    if len(scaled) != 1 or not workers:
        errors.append("one ScaledObject for the workers (croupier-worker) is expected")
    else:
        so = scaled[0]["spec"]
        target = so["scaleTargetRef"]
        if (target.get("kind"), target["name"]) != (workers[0]["kind"], "croupier-worker"):
            errors.append("the ScaledObject does not scale the croupier-worker workload")
        if (so.get("minReplicaCount"), so.get("maxReplicaCount")) != (3, 20):
            errors.append("the workers scale from 3 to 20")
        # croupier's own delay through Prometheus: KEDA's redis-streams scaler sees no
        # backlog on pending entries, and none on the group's lag once ingest has taken
        # back an append (Redis answers a null lag): keda-scaledobject.yaml says why; the
        # backlog in events grows with the rate (batches held while inserted) and stops at
        # the high-water marks.
        triggers = so["triggers"]
        if len(triggers) != 1 or triggers[0]["type"] != "prometheus" \
                or "croupier_stream_oldest_unacked_age_seconds" not in triggers[0]["metadata"].get("query", ""):
            errors.append(f"triggers {triggers}: one prometheus trigger on croupier_stream_oldest_unacked_age_seconds expected")
        else:
            try:
                per_pod = float(triggers[0]["metadata"].get("threshold", ""))
            except ValueError:
                per_pod = 0.0
            # Every pod count is asked for before the delay is twice the one
            # CroupierWorkerDelayHigh warns at (30 s).
            if not 0 < per_pod * int(so.get("maxReplicaCount", 0)) <= 60:
                errors.append(f"threshold {triggers[0]['metadata'].get('threshold')!r}: a delay in seconds per pod, "
                              f"every count up to maxReplicaCount asked for within 60 s of delay")
    for e in errors:
        print(f"deploy_lint: k8s: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"deploy_lint: k8s: {len(docs)} objects, {len(workloads)} workloads Guaranteed with whole CPUs")
    return 0


if __name__ == "__main__":
    sys.exit({"coverage": coverage, "board-rules": board_rules, "collector": collector, "k8s": k8s}[
        sys.argv[1] if len(sys.argv) > 1 else ""]())
