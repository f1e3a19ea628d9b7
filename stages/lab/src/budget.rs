//! Host CPU budgets: each simulated host's processes share one CPU quota, as a small VM would.
//!
//! Where the machine allows it, a host gets a cgroup with a CFS quota of `budget x period` per
//! `period`: cgroup v1's `cpu` controller (`cpu.cfs_quota_us`, `cpu.cfs_period_us`) or cgroup v2's
//! `cpu.max`, both writable by root. A process joins its host's group *before* it starts (a shell
//! writes its own PID into `cgroup.procs`, then `exec`s the service, through `setpriv` when it must
//! drop to another user), so every child it forks (PostgreSQL's backends) is inside from birth.
//! Without root or without a cpu controller, budgets are recorded as *not enforced*; results say so.
//!
//! The period is short (10 ms): throttling then costs at most a few milliseconds of stall, rather
//! than the 100 ms default period, which would dominate tail latency (see LAB-NOTES: throughput
//! follows the budget almost exactly; small budgets add throttling jitter to the tail).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;

/// CFS period, microseconds.
pub const PERIOD_US: u64 = 10_000;

/// The smallest quota the kernel accepts per period, microseconds (1 ms). A budget under 0.1
/// core cannot be expressed in a 10 ms period, so its period is lengthened instead
/// ([`quota_and_period`]): 0.05 core is 1 ms every 20 ms, not silently 1 ms every 10 ms.
pub const MIN_QUOTA_US: u64 = 1_000;

/// The smallest budget a host may have (checked when a stage is read): 1 ms every 100 ms. Below
/// it the period would pass 100 ms, and a host would stall that long whenever its quota ran out,
/// which would swamp any latency measured through it.
pub const MIN_CORES: f64 = 0.01;

/// The CFS quota and period, microseconds, that give `cores` (at least [`MIN_CORES`]): the
/// standard period, or a longer one when the quota would fall under [`MIN_QUOTA_US`].
pub fn quota_and_period(cores: f64) -> (u64, u64) {
    let cores = cores.max(MIN_CORES);
    let quota = (cores * PERIOD_US as f64).round() as u64;
    if quota >= MIN_QUOTA_US {
        (quota, PERIOD_US)
    } else {
        let period = (MIN_QUOTA_US as f64 / cores).round() as u64;
        (MIN_QUOTA_US, period)
    }
}

/// Where CPU groups can be made on this machine.
#[derive(Debug, Clone)]
pub enum Controller {
    /// cgroup v1: the `cpu` hierarchy's root.
    V1(PathBuf),
    /// cgroup v2: the unified hierarchy's root.
    V2(PathBuf),
    /// No writable cpu controller: budgets are recorded, not enforced.
    None(String),
}

impl Controller {
    /// Finds a writable cpu controller.
    pub fn detect() -> Controller {
        // A measurement of the software alone (scripts/bench/stage1.py sets it, to compare the
        // app with pgbench on the same unbudgeted cores) turns budgets off; results say so.
        if std::env::var("ARCHLAB_BUDGETS").is_ok_and(|v| v == "off") {
            return Controller::None("turned off (ARCHLAB_BUDGETS=off)".into());
        }
        if !nix::unistd::geteuid().is_root() {
            return Controller::None("not root: cgroups need root (a real system would use systemd-run --user --scope -p CPUQuota)".into());
        }
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let candidate = if v1.join("cpu.cfs_quota_us").exists() {
            Controller::V1(v1.to_path_buf())
        } else if fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu"))
        {
            Controller::V2(v2.to_path_buf())
        } else {
            return Controller::None("no cgroup cpu controller found".into());
        };
        // Present is not writable (a read-only cgroupfs in a container, say): try a probe group.
        match candidate.group("probe", 1.0) {
            Ok(Some(dir)) => {
                let _ = fs::remove_dir(dir);
                candidate
            }
            Ok(None) => candidate,
            Err(e) => Controller::None(format!("cgroup cpu controller not writable: {e:#}")),
        }
    }

    /// Whether budgets can be enforced.
    pub fn enforces(&self) -> bool {
        !matches!(self, Controller::None(_))
    }

    /// Creates (or updates) the group `name` with `cores` of CPU; returns its folder.
    pub fn group(&self, name: &str, cores: f64) -> anyhow::Result<Option<PathBuf>> {
        let (quota, period) = quota_and_period(cores);
        match self {
            Controller::None(_) => Ok(None),
            Controller::V1(root) => {
                let dir = root.join("archlab").join(name);
                fs::create_dir_all(&dir)
                    .with_context(|| format!("creating cgroup {}", dir.display()))?;
                fs::write(dir.join("cpu.cfs_period_us"), period.to_string())?;
                fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
                Ok(Some(dir))
            }
            Controller::V2(root) => {
                let parent = root.join("archlab");
                fs::create_dir_all(&parent)?;
                // Children of a v2 group can use a controller only if the parent delegates it.
                let _ = fs::write(root.join("cgroup.subtree_control"), "+cpu");
                let _ = fs::write(parent.join("cgroup.subtree_control"), "+cpu");
                let dir = parent.join(name);
                fs::create_dir_all(&dir)
                    .with_context(|| format!("creating cgroup {}", dir.display()))?;
                fs::write(dir.join("cpu.max"), format!("{quota} {period}"))?;
                Ok(Some(dir))
            }
        }
    }
}

/// This process (every thread of it) inside a CPU group until dropped, then back in the group it
/// came from: how the load harness runs in a budget of its own, so it never starves a host and a
/// host never starves it.
#[derive(Debug)]
pub struct Joined {
    /// The `cgroup.procs` of the group to go back to (none when budgets are not enforced).
    previous: Option<PathBuf>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some(procs) = &self.previous {
            let _ = fs::write(procs, std::process::id().to_string());
        }
    }
}

impl Controller {
    /// Moves this process into the group `name` with `cores` of CPU (made if needed).
    pub fn join_self(&self, name: &str, cores: f64) -> anyhow::Result<Joined> {
        let Some(dir) = self.group(name, cores)? else {
            return Ok(Joined { previous: None });
        };
        let (Controller::V1(root) | Controller::V2(root)) = self else {
            return Ok(Joined { previous: None });
        };
        // Where we are now: `N:cpu,cpuacct:/path` (v1) or `0::/path` (v2) in /proc/self/cgroup.
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let current = own.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let ours = match self {
                Controller::V1(_) => controllers.split(',').any(|c| c == "cpu"),
                _ => controllers.is_empty(),
            };
            ours.then(|| root.join(path.trim_start_matches('/')))
        });
        fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining {}", dir.display()))?;
        Ok(Joined {
            previous: current.map(|c| c.join("cgroup.procs")),
        })
    }
}

/// The command that starts `program` inside `group` (if any), as `user` (if any): a shell joins
/// the group, then execs, so nothing the service forks escapes its budget.
pub fn wrap(
    group: Option<&Path>,
    user: Option<(u32, u32)>,
    program: &Path,
    args: Vec<String>,
) -> (PathBuf, Vec<String>, Option<(u32, u32)>) {
    let Some(group) = group else {
        return (program.to_path_buf(), args, user);
    };
    let mut wrapped = vec![
        "-c".to_owned(),
        r#"echo $$ > "$0/cgroup.procs" && exec "$@""#.to_owned(),
        group.display().to_string(),
    ];
    if let Some((uid, gid)) = user {
        wrapped.extend([
            "setpriv".into(),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
            "--".into(),
        ]);
    }
    wrapped.push(program.display().to_string());
    wrapped.extend(args);
    (PathBuf::from("/bin/sh"), wrapped, None)
}

/// `roots` and every process descending from them, from `/proc` (for signalling a whole
/// service: PostgreSQL's backends, nginx's workers).
pub fn process_tree(roots: &[i32]) -> Vec<i32> {
    tree_in(&process_table(), roots)
}

/// `roots` and their descendants in one snapshot of the process table.
fn tree_in(table: &[(i32, i32, u64)], roots: &[i32]) -> Vec<i32> {
    let mut members: Vec<i32> = roots.to_vec();
    loop {
        let before = members.len();
        for (pid, ppid, _) in table {
            if members.contains(ppid) && !members.contains(pid) {
                members.push(*pid);
            }
        }
        if members.len() == before {
            return members;
        }
    }
}

/// (pid, parent pid, CPU ticks including reaped children) of every process.
fn process_table() -> Vec<(i32, i32, u64)> {
    let mut table = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            // After the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17):
            // indexes 1 and 11 to 14 here. cutime/cstime hold the CPU of children that exited and
            // were reaped (PostgreSQL backends), which would otherwise vanish from the sum.
            let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
            let (Some(ppid), Some(utime), Some(stime), Some(cutime), Some(cstime)) = (
                fields.get(1).and_then(|v| v.parse::<i32>().ok()),
                num(11),
                num(12),
                num(13),
                num(14),
            ) else {
                continue;
            };
            table.push((pid, ppid, utime + stime + cutime + cstime));
        }
    }
    table
}

/// CPU time (seconds) used so far by `pids` and all their descendants, from `/proc`.
pub fn cpu_seconds(pids: &[i32]) -> f64 {
    cpu_seconds_each(&[pids.to_vec()])[0]
}

/// [`cpu_seconds`] of several groups of processes (one per host) from one read of `/proc`: the
/// monitoring host asks for every host every few seconds, on a small budget.
pub fn cpu_seconds_each(groups: &[Vec<i32>]) -> Vec<f64> {
    let ticks = 100.0; // USER_HZ on Linux
    let table = process_table();
    groups
        .iter()
        .map(|pids| {
            let members = tree_in(&table, pids);
            table
                .iter()
                .filter(|(pid, _, _)| members.contains(pid))
                .map(|(_, _, t)| *t as f64 / ticks)
                .sum()
        })
        .collect()
}

/// Busy and total CPU time of the whole machine, from `/proc/stat` (jiffies).
pub fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_budgets_get_a_longer_period_not_a_bigger_quota() {
        assert_eq!(quota_and_period(0.5), (5_000, 10_000));
        assert_eq!(quota_and_period(0.1), (1_000, 10_000));
        assert_eq!(quota_and_period(0.05), (1_000, 20_000));
        assert_eq!(quota_and_period(MIN_CORES), (1_000, 100_000));
        for cores in [0.01, 0.03, 0.05, 0.07, 0.1, 0.2, 1.5] {
            let (quota, period) = quota_and_period(cores);
            assert!(quota >= MIN_QUOTA_US && period >= PERIOD_US);
            let given = quota as f64 / period as f64;
            assert!((given - cores).abs() < 0.001, "{cores} became {given}");
        }
    }
}
