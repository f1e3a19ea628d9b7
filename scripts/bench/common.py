"""What the benchmark scripts share: running a tool, naming its version, the git state a result
was measured at, and writing the result file."""

import json, os, subprocess

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
    """The commit measured and whether tracked files differed from it (provenance of a result)."""
    return {
        "git_commit": run(["git", "-C", ROOT, "rev-parse", "HEAD"]).strip(),
        "git_dirty": bool(run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).strip()),
    }


def write_result(path, result):
    """`result` as indented JSON at `path` (folders made as needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"written: {os.path.relpath(path, ROOT)}")
