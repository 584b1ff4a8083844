#!/usr/bin/env python3
"""Checks of docker-compose.yml that `docker-compose config` does not make (run by
scripts/check-deploy.sh):

  - every image is pinned by version (no `latest`, no bare name), and so is every Grafana
    plugin GF_INSTALL_PLUGINS (`<id> <version>`, Grafana 11) and GF_PLUGINS_PREINSTALL_SYNC
    (`<id>@<version>`, Grafana 12) install, and both name the same plugins;
  - every file or folder mounted from the repository exists (compose creates a missing
    bind source as an empty folder, silently);
  - the Collector's pipelines name only receivers, processors and exporters it defines;
  - the clickhouse service sets CLICKHOUSE_USER and CLICKHOUSE_PASSWORD (without them the
    image limits `default` to localhost), and every croupier service
    (CROUPIER_CLICKHOUSE__USER / __PASSWORD) and Grafana's ClickHouse datasource
    (GRAFANA_CLICKHOUSE_USER / _PASSWORD, which the provisioning file reads) connect with
    exactly those;
  - deploy/seccomp-io_uring.json is moby's default profile (vendored in deploy/seccomp/)
    with io_uring_setup, io_uring_enter and io_uring_register allowed, nothing else changed;
  - every fixed `ipv4_address` is in its network's subnet and outside its `ip_range`, where
    the other containers' addresses are drawn;
  - CI (.ci/run) runs every command of the Dockerfile's build stages (build, dashboard).
"""

import json
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
errors = []


def fail(msg):
    errors.append(msg)


def compose():
    out = subprocess.run(["docker-compose", "config"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return yaml.safe_load(out)


def images(doc):
    for name, svc in doc["services"].items():
        image = svc.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not re.match(r"^v?\d+(\.\d+)+", tag):
            fail(f"service {name}: image {image!r} is not pinned by version")


def plugins(doc):
    for name, svc in doc["services"].items():
        env = env_of(svc)
        legacy, preinstall = set(), set()
        for item in (env.get("GF_INSTALL_PLUGINS") or "").split(","):
            parts = item.split()
            if item.strip() and (len(parts) != 2 or not re.match(r"^\d+(\.\d+)+$", parts[1])):
                fail(f"service {name}: Grafana plugin {item.strip()!r} is not pinned by version")
            elif item.strip():
                legacy.add(tuple(parts))
        for item in (env.get("GF_PLUGINS_PREINSTALL_SYNC") or "").split(","):
            parts = item.strip().split("@")
            if item.strip() and (len(parts) != 2 or not re.match(r"^\d+(\.\d+)+$", parts[1])):
                fail(f"service {name}: Grafana plugin {item.strip()!r} is not pinned by version (id@version)")
            elif item.strip():
                preinstall.add(tuple(parts))
        if legacy != preinstall:
            fail(f"service {name}: GF_INSTALL_PLUGINS (Grafana 11) and GF_PLUGINS_PREINSTALL_SYNC "
                 f"(Grafana 12) install different plugins: {sorted(legacy)} vs {sorted(preinstall)}")


def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env if "=" in e)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def clickhouse_credentials(doc):
    services = doc["services"]
    server = env_of(services.get("clickhouse", {}))
    want = (server.get("CLICKHOUSE_USER", ""), server.get("CLICKHOUSE_PASSWORD", ""))
    if not want[0] or not want[1]:
        fail("service clickhouse: CLICKHOUSE_USER and CLICKHOUSE_PASSWORD must be set "
             "(without them the image limits `default` to localhost)")
        return
    clients = 0
    for name, svc in services.items():
        env = env_of(svc)
        if svc.get("image", "").startswith("croupier-analytics/croupier:"):
            got = (env.get("CROUPIER_CLICKHOUSE__USER"), env.get("CROUPIER_CLICKHOUSE__PASSWORD"))
        elif svc.get("image", "").startswith("grafana/grafana:"):
            got = (env.get("GRAFANA_CLICKHOUSE_USER"), env.get("GRAFANA_CLICKHOUSE_PASSWORD"))
        else:
            continue
        clients += 1
        if got[0] != want[0]:
            fail(f"service {name}: ClickHouse user {got[0]!r}, the server's is {want[0]!r}")
        if got[1] != want[1]:
            fail(f"service {name}: ClickHouse password differs from the clickhouse service's")
    if clients == 0:
        fail("no croupier or Grafana service found to check ClickHouse credentials against")
    with open(os.path.join(ROOT, "deploy/grafana/provisioning/datasources/clickhouse.yml")) as f:
        ds = yaml.safe_load(f)
    for d in ds.get("datasources", []):
        if d.get("type") != "grafana-clickhouse-datasource":
            continue
        if (d.get("jsonData") or {}).get("username") != "${GRAFANA_CLICKHOUSE_USER}":
            fail("grafana datasource ClickHouse: username is not ${GRAFANA_CLICKHOUSE_USER}")
        if (d.get("secureJsonData") or {}).get("password") != "${GRAFANA_CLICKHOUSE_PASSWORD}":
            fail("grafana datasource ClickHouse: password is not ${GRAFANA_CLICKHOUSE_PASSWORD}")


def mounts(doc):
    for name, svc in doc["services"].items():
        for v in svc.get("volumes", []):
            source = v["source"] if isinstance(v, dict) else v.split(":", 1)[0]
            kind = v.get("type", "bind") if isinstance(v, dict) else "bind"
            if kind != "bind" or not source.startswith(ROOT + os.sep):
                continue
            if not os.path.exists(source):
                fail(f"service {name}: mounts {os.path.relpath(source, ROOT)}, which does not exist")


def collector():
    with open(os.path.join(ROOT, "deploy/otel-collector/config.yaml")) as f:
        cfg = yaml.safe_load(f)
    for pname, pipe in cfg["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for comp in pipe.get(kind, []):
                if comp not in (cfg.get(kind) or {}):
                    fail(f"otel-collector: pipeline {pname} uses {kind[:-1]} {comp}, not defined")


IO_URING = ("io_uring_setup", "io_uring_enter", "io_uring_register")


def unconditional_allow(prof):
    return {n for r in prof["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"
            and not r.get("includes") and not r.get("excludes") and not r.get("args") for n in r["names"]}


def seccomp():
    with open(os.path.join(ROOT, "deploy/seccomp/moby-default-20.10.24.json")) as f:
        base = json.load(f)
    with open(os.path.join(ROOT, "deploy/seccomp-io_uring.json")) as f:
        prof = json.load(f)
    # The profile is moby's default (vendored) plus, when the base lacks it, one rule that
    # allows the three io_uring calls: nothing else may differ.
    want = json.loads(json.dumps(base))
    if not set(IO_URING) <= unconditional_allow(base):
        want["syscalls"].append({"names": sorted(IO_URING), "action": "SCMP_ACT_ALLOW"})
    if prof != want:
        fail("seccomp-io_uring.json: not deploy/seccomp/moby-default-20.10.24.json plus the io_uring rule")
    if prof.get("defaultAction") == "SCMP_ACT_ALLOW":
        fail("seccomp-io_uring.json: defaultAction SCMP_ACT_ALLOW (a denylist, not Docker's allowlist)")
    allowed = unconditional_allow(prof)
    for sc in IO_URING:
        if sc not in allowed:
            fail(f"seccomp-io_uring.json: {sc} is not allowed")
    # Allowed by Docker's default only with CAP_SYS_ADMIN and the like, never unconditionally.
    for sc in ("bpf", "init_module", "kexec_load", "mount", "setns", "unshare", "reboot"):
        if sc in allowed:
            fail(f"seccomp-io_uring.json: {sc} is allowed unconditionally (Docker's default profile does not)")


def fixed_addresses(doc):
    """Every fixed `ipv4_address` lies in its network's subnet and outside its `ip_range`
    (where the other containers' addresses are drawn: one started first could take it)."""
    import ipaddress
    for name, svc in doc["services"].items():
        nets = svc.get("networks") or {}
        if not isinstance(nets, dict):
            continue
        for net, opts in nets.items():
            addr = (opts or {}).get("ipv4_address")
            if not addr:
                continue
            configs = (doc.get("networks", {}).get(net, {}).get("ipam") or {}).get("config") or []
            ip = ipaddress.ip_address(addr)
            if not any("subnet" in c and ip in ipaddress.ip_network(c["subnet"]) for c in configs):
                fail(f"{name}: ipv4_address {addr} is in no subnet of network {net}")
            for c in configs:
                if "ip_range" not in c:
                    fail(f"{name}: network {net} sets no ip_range: another container may take {addr} first")
                elif ip in ipaddress.ip_network(c["ip_range"]):
                    fail(f"{name}: ipv4_address {addr} is inside ip_range {c['ip_range']} of network {net}")


def build_stage():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        lines = f.read().splitlines()
    with open(os.path.join(ROOT, ".ci/run")) as f:
        ci = {line.strip() for line in f}
    stage, runs = None, []
    for line in lines:
        m = re.match(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            stage = m.group(1)
        elif stage in ("build", "dashboard") and line.startswith("RUN "):
            runs.append(line[4:].strip())
    if not runs:
        fail("Dockerfile: no RUN in the build stage")
    for cmd in runs:
        if cmd not in ci:
            fail(f"Dockerfile: a build stage runs {cmd!r}, which .ci/run does not")


doc = compose()
images(doc)
plugins(doc)
mounts(doc)
clickhouse_credentials(doc)
collector()
seccomp()
fixed_addresses(doc)
build_stage()
for e in errors:
    print(f"compose_lint: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"compose_lint: {len(doc['services'])} services, images and plugins pinned, mounts present, ClickHouse credentials equal, fixed addresses outside the dynamic range, build stage run by CI")
