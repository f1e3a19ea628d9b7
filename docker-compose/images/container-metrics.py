#!/usr/bin/env python3
"""container-metrics: every container's CPU against its budget, for Prometheus.

    container-metrics            serve on 0.0.0.0:9100 (the monitoring host's `host-metrics`)

What: in Docker Compose a host is a container, and its CPU budget is the container's `cpus:`.
This serves, for every container of its own compose project, the same two metrics the native
lab's `archlab host-metrics` serves for its hosts (stages/lab/src/monitor.rs), so the dashboard's
"CPU used / budget" panel reads both alike:

    archlab_host_cpu_seconds_total{host="app-1"}  CPU time the container has used
    archlab_host_cpu_budget_cores{host="app-1"}   its budget (`cpus:`), in cores

How: asks the Docker engine, through its socket (mounted read-only by hosts.yml), for the
project's containers (its own container's `com.docker.compose.project` label); reads each one's
CPU time and quota from its cgroup in the host's cgroup tree (mounted read-only at /host/cgroup;
cgroup v1 or v2, Docker's cgroupfs or systemd driver). The engine's own stats call was no use
here: one sample took 0.86 s per container on this machine, past a 2 s scrape for six of them.
A host is named `<service>` or, for a scaled service, `<service>-<number>`, as in the lab.
Why the socket: a container's name is known to the engine, not to its cgroup, and the programs
in it (PostgreSQL, Redis, nginx) export no CPU. The socket is the engine's whole API; a real
deployment would use cAdvisor or the engine's own metrics, on a host it trusts.
Python's standard library only (the monitor image installs Debian's python3).
"""
import http.client
import http.server
import json
import os
import socket
import sys
import urllib.parse

SOCKET = "/var/run/docker.sock"
PORT = 9100
# Bounds every call to the engine: a stats sample answers in milliseconds; Prometheus gives a
# scrape 2 s in all (stages/lab/src/monitor.rs, SCRAPE_INTERVAL).
ENGINE_TIMEOUT_S = 1.5


class EngineConnection(http.client.HTTPConnection):
    """HTTP to the Docker engine over its Unix socket."""

    def __init__(self):
        super().__init__("docker", timeout=ENGINE_TIMEOUT_S)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(ENGINE_TIMEOUT_S)
        self.sock.connect(SOCKET)


def engine(path):
    conn = EngineConnection()
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"engine answered {response.status} for {path}: {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


def own_project():
    # A container's hostname is its id's first 12 characters (compose sets no other).
    me = engine(f"/containers/{socket.gethostname()}/json")
    return me["Config"]["Labels"]["com.docker.compose.project"]


CGROUP = "/host/cgroup"


def read(path):
    with open(path) as f:
        return f.read().strip()


def cgroup_dirs(cid):
    """The container's cgroup folders under the cgroup controllers that may hold them."""
    for controller in ("cpu,cpuacct", "cpuacct", "cpu", ""):
        for name in (f"docker/{cid}", f"system.slice/docker-{cid}.scope"):
            d = os.path.join(CGROUP, controller, name)
            if os.path.isdir(d):
                yield d


def cpu_seconds(cid):
    for d in cgroup_dirs(cid):
        if os.path.exists(f"{d}/cpuacct.usage"):  # v1: nanoseconds
            return int(read(f"{d}/cpuacct.usage")) / 1e9
        if os.path.exists(f"{d}/cpu.stat") and not os.path.exists(f"{d}/cpu.cfs_quota_us"):
            stat = dict(line.split() for line in read(f"{d}/cpu.stat").splitlines())
            if "usage_usec" in stat:  # v2: microseconds
                return int(stat["usage_usec"]) / 1e6
    return None


def budget_cores(cid, nano_cpus):
    """The quota the kernel enforces, else what the engine was asked for (`cpus:`)."""
    for d in cgroup_dirs(cid):
        if os.path.exists(f"{d}/cpu.cfs_quota_us"):  # v1
            quota = int(read(f"{d}/cpu.cfs_quota_us"))
            if quota > 0:
                return quota / int(read(f"{d}/cpu.cfs_period_us"))
        if os.path.exists(f"{d}/cpu.max"):  # v2: "quota period" or "max period"
            quota, period = read(f"{d}/cpu.max").split()
            if quota != "max":
                return int(quota) / int(period)
    return nano_cpus / 1e9 if nano_cpus else None


def metrics(project):
    label = json.dumps({"label": [f"com.docker.compose.project={project}"]})
    containers = engine("/containers/json?filters=" + urllib.parse.quote(label))
    scaled = {}
    for c in containers:
        service = c["Labels"].get("com.docker.compose.service", c["Id"][:12])
        scaled[service] = scaled.get(service, 0) + 1
    used, budget = [], []
    for c in sorted(containers, key=lambda c: c["Names"][0]):
        labels = c["Labels"]
        service = labels.get("com.docker.compose.service", c["Id"][:12])
        host = service
        if scaled[service] > 1:
            host = f'{service}-{labels.get("com.docker.compose.container-number", "?")}'
        seconds = cpu_seconds(c["Id"])
        if seconds is not None:
            used.append(f'archlab_host_cpu_seconds_total{{host="{host}"}} {seconds}')
        nano = engine(f'/containers/{c["Id"]}/json')["HostConfig"].get("NanoCpus") or 0
        cores = budget_cores(c["Id"], nano)
        if cores:
            budget.append(f'archlab_host_cpu_budget_cores{{host="{host}"}} {cores}')
    return "\n".join([
        "# HELP archlab_host_cpu_seconds_total CPU time used by the container (the host).",
        "# TYPE archlab_host_cpu_seconds_total counter",
        *used,
        "# HELP archlab_host_cpu_budget_cores The container's CPU budget (its cgroup quota), in cores.",
        "# TYPE archlab_host_cpu_budget_cores gauge",
        *budget,
        "",
    ])


class Handler(http.server.BaseHTTPRequestHandler):
    project = None

    def do_GET(self):
        try:
            body = metrics(Handler.project).encode()
            status = 200
        except (OSError, KeyError, ValueError) as e:
            body = f"engine: {e}\n".encode()
            status = 503
        self.send_response(status)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # one scrape every 2 s: not worth a log line each


def main():
    Handler.project = own_project()
    print(f"container-metrics: project {Handler.project}, serving :{PORT}/metrics", flush=True)
    http.server.HTTPServer(("0.0.0.0", PORT), Handler).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
