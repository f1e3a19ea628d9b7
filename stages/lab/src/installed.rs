//! Programs `scripts/setup.sh` installs itself, outside the system's package manager, and where
//! the lab finds them.
//!
//! Most servers of the ladder are Debian packages on the `PATH`. Two are not:
//!
//! - Garage (stage 7's object store) has no Debian package; the setup builds it from its crate.
//! - Patroni (stage 8's failover manager) has one, but Debian 12's 3.0.2 can hand the leader key
//!   back to a primary that was frozen past its time to live, and so lose acknowledged writes
//!   (its `_update_leader` puts the key unconditionally: patroni/patroni#2689, fixed in 3.0.3;
//!   a stale primary winning the race was closed further by #2787 in 3.1.0). The setup installs
//!   3.1.2 from PyPI into a Python environment of its own, every library pinned
//!   (`scripts/patroni-requirements.txt`). Not a newer one: from 3.2.0 on (#2869) Patroni raises
//!   any `ttl` below 20 s to 20 s, and the lab's leader key lives 10 s
//!   ([`crate::patroni::LEADER_TTL_SECS`], the target of a failover within 12 s). Tried
//!   here with 4.1.4: "ttl=10 can't be smaller than 20, adjusting...", and a primary frozen for
//!   20 s kept its key until it thawed (stages/08-consensus/results/trials/logs/
//!   freeze-patroni-4.1.4-ttl-floor-excerpt.log). Upstream's floor is a safety margin for busy
//!   machines; the lab keeps the shorter TTL and measures what it costs (the drills).
//!
//! Each goes under `/opt/archlab/<name>-<version>` when the setup runs as root, else under the
//! user's data folder; an environment variable names another copy. The version is part of the
//! folder, so a newer pin installs beside the old one rather than over it.

use std::path::PathBuf;

use anyhow::Context;

/// One program the setup installs: where it puts it and how to find it.
#[derive(Debug, Clone, Copy)]
pub struct Installed {
    /// The folder's name before the version (`garage`, `patroni`).
    pub name: &'static str,
    /// The pinned version: keep in step with the script that installs it
    /// (`scripts/install-garage.sh`, `scripts/setup.sh`).
    pub version: &'static str,
    /// The program, relative to the install folder.
    pub program: &'static str,
    /// The environment variable that names another copy of the program.
    pub override_var: &'static str,
}

/// Garage, the object store of stage 7 (`GARAGE_VERSION` in `scripts/install-garage.sh`).
pub const GARAGE: Installed = Installed {
    name: "garage",
    version: "2.5.0",
    program: "bin/garage",
    override_var: "ARCHLAB_GARAGE_BIN",
};

/// Patroni, stage 8's failover manager (`PATRONI_VERSION` in `scripts/setup.sh`), in its own
/// Python environment: the program is the environment's entry point.
pub const PATRONI: Installed = Installed {
    name: "patroni",
    version: "3.1.2",
    program: "bin/patroni",
    override_var: "ARCHLAB_PATRONI_BIN",
};

impl Installed {
    /// The program: the override if set, else the first install folder that holds it.
    pub fn program(&self) -> anyhow::Result<PathBuf> {
        if let Ok(path) = std::env::var(self.override_var) {
            return Ok(PathBuf::from(path));
        }
        let folder = format!("{}-{}", self.name, self.version);
        let mut candidates = vec![PathBuf::from("/opt/archlab").join(&folder)];
        let data_home = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
        if let Some(data_home) = data_home {
            candidates.push(data_home.join("archlab").join(&folder));
        }
        candidates
            .into_iter()
            .map(|root| root.join(self.program))
            .find(|program| program.exists())
            .with_context(|| {
                format!(
                    "{} {} not found: run scripts/setup.sh (it installs it once), or set {}",
                    self.name, self.version, self.override_var
                )
            })
    }
}
