"""What the benchmark scripts share: running a tool, naming its version, the git state a result
was measured at, and writing the result file."""

import contextlib, json, os, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd, **kw):
    """`cmd`'s standard output; raises if it fails."""
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def version(cmd):
    """The first line `cmd` prints (on either stream: `nginx -v` writes to stderr), or "unknown"."""
    try:
        p = subprocess.run(cmd, text=True, capture_output=True)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def git_state():
    """The commit measured and whether tracked files that could change what was measured
    differed from it (provenance of a result). Result files and prose are left out, as the
    harness's own provenance does (`git_state` in loadtest/src/lib.rs): a walkthrough written
    while a run goes on does not change what the run measured."""
    status = ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", ".",
              ":(exclude,glob)**/results/**", ":(exclude,glob)**/*.md", ":(exclude,glob)docs/**"]
    return {
        "git_commit": run(["git", "-C", ROOT, "rev-parse", "HEAD"]).strip(),
        "git_dirty": bool(run(status).strip()),
    }


def write_result(path, result):
    """`result` as indented JSON at `path` (folders made as needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"written: {os.path.relpath(path, ROOT)}")


def wait_http(url, proc):
    """Returns once `url` answers 2xx; exits if `proc` dies first or 10 s pass."""
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited early")
        try:
            run(["curl", "-fsS", "-o", "/dev/null", url])
            return
        except subprocess.CalledProcessError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"{url} never answered")


def start_fixed_nginx(prefix, addr):
    """nginx (one worker, no access log) answering `200 ok` to everything on `addr`, with its
    files under `prefix`: a stand-in whose own cost is as small as a server's gets, so what is
    measured in front of it is the client or the proxy. Returns the process once it answers."""
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; worker_processes 1; error_log stderr error; pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{ access_log off; server {{ listen {addr}; keepalive_requests 100000000;
  location / {{ return 200 "ok\\n"; }} }} }}
""")
    proc = subprocess.Popen(["nginx", "-p", prefix, "-c", conf], stderr=subprocess.DEVNULL)
    wait_http(f"http://{addr}/", proc)
    return proc


def pg_bin(name):
    """The newest installed PostgreSQL's `name` binary (Debian keeps them off PATH)."""
    for major in sorted(os.listdir("/usr/lib/postgresql"), key=lambda v: int(v) if v.isdigit() else 0, reverse=True):
        path = f"/usr/lib/postgresql/{major}/bin/{name}"
        if os.path.exists(path):
            return path
    raise SystemExit(f"{name} not found; run scripts/setup.sh")


# Where the lab puts its hosts' CPU groups (`host-<address with dashes>`): cgroup v1's cpu
# hierarchy, or cgroup v2's unified one (stages/lab/src/budget.rs).
LAB_CGROUP_ROOTS = ["/sys/fs/cgroup/cpu/archlab", "/sys/fs/cgroup/archlab"]

TICKS = os.sysconf("SC_CLK_TCK")


def host_group(address):
    """The CPU group of the lab host at `address` (named as stages/lab/src/lab.rs names it)."""
    name = "host-" + address.replace(".", "-")
    for root in LAB_CGROUP_ROOTS:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    return None


def group_cpu_seconds(group):
    """CPU seconds of every process in `group`, with the reaped children they waited for
    (PostgreSQL's postmaster reaps its backends: their time would otherwise vanish)."""
    total = 0
    try:
        pids = open(os.path.join(group, "cgroup.procs")).read().split()
    except OSError:
        return 0.0
    for pid in pids:
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / TICKS


@contextlib.contextmanager
def own_stage(stage, up_args, net, prefix):
    """A stage of its own for a measurement: `archlab up STAGE UP_ARGS --fresh` with the release
    binaries, in a new state folder and on loopback network 127.NET.x.x (beside any other lab);
    yields the `archlab` command to run more against it (`lab + ["seed", "7"]`) and its database
    services (`archlab status --json`, by host name); `archlab down` and the folder removed after,
    however the measurement ends."""
    state = tempfile.mkdtemp(prefix=prefix)
    os.chmod(state, 0o755)  # PostgreSQL runs as `postgres`, which must enter it
    lab = [os.path.join(ROOT, "target/release/archlab"), "--state-dir", state, "--net", net]
    try:
        run(lab + ["up", str(stage)] + list(up_args) + ["--fresh"])
        services = json.loads(run(lab + ["status", "--json"]))["services"]
        yield lab, sorted((s for s in services if s["role"] == "database"), key=lambda s: s["host"])
    finally:
        subprocess.run(lab + ["down"], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def users_at_home(shards):
    """A `WHERE` clause for `users` that keeps, on one of `shards` shards, the users whose home it
    is: every shard holds every user's row (stage 7), and a user's home is their bucket's shard,
    the low byte of their id `mod shards` (`BucketMap::even` in services/conduit/src/db/shards.rs),
    the number the shard's `shard_identity` holds. On one database: every user."""
    return f"WHERE (id & 255) % {shards} = (SELECT shard_id FROM shard_identity)"


def psql(db, text):
    """`text` run as the superuser on the `conduit` database of `db` (a service of `archlab status
    --json`: its address and port), unaligned and tuples only; raises if it fails."""
    return run([pg_bin("psql"), "-h", db["address"], "-p", str(db["port"]), "-U", "postgres", "-d", "conduit",
                "-At", "-v", "ON_ERROR_STOP=1", "-c", text])


def run_harness(cmd, when_loading=None):
    """Runs the harness (`loadtest ...`, its result written where `cmd` says) and calls
    `when_loading` once its setup (reading the data set, logging its users in) is done and its load
    begins, which it says on stderr ("open loop: ..."), so that a caller can count from there.
    Exits with the harness's own first lines (its error, not a backtrace) if it fails."""
    proc = subprocess.Popen(cmd, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "RUST_BACKTRACE": "0"})
    said = []
    for line in proc.stderr:  # universal newlines: the live display's `\r` ends a line too
        said.append(line)
        if when_loading and line.startswith("open loop:"):
            when_loading()
            when_loading = None
    if proc.wait() != 0:
        sys.exit(f"the harness failed:\n{''.join(said[:12])}")
    if when_loading:
        sys.exit("the harness never announced its open loop: nothing was measured")
