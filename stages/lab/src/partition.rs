//! Network faults for stage 8's drills: one database host cut off while it keeps running.
//!
//! A frozen host (SIGSTOP) stops *everything*, its clocks and timers too; a cut-off host runs on,
//! sure it is still the primary until it learns otherwise. That is where split brain lives.
//!
//! Every simulated host shares the machine's one loopback network, and a connection a host opens
//! leaves from 127.0.0.1 whatever the host's own address (the kernel's source for a 127/8
//! destination), so addresses alone cannot say which host sent a packet. Its owner can: each
//! database host runs as an OS user of its own ([`crate::postgres::host_user`]), and `iptables`'s
//! `owner` match sees the user of every packet a local socket sends. The rules live in a chain of
//! their own, `archlab-cut-<host>`, jumped to from `OUTPUT` (every loopback packet passes there
//! once, owner known), and are removed when the [`Cut`] heals or is dropped.
//!
//! ```text
//!   isolated:     nothing reaches the host, nothing it opens leaves it: a dead network link
//!   partitioned:  the host cannot reach the consensus store or the other database hosts, and
//!                 they cannot reach it; the app hosts still can (a partial partition: the old
//!                 primary keeps taking writes until its Patroni notices it lost the store)
//! ```
//!
//! Either way the host still talks to itself (Patroni to its own PostgreSQL). Its answers to
//! connections made to it leave for 127.0.0.1, like everything else, so they are told apart by
//! the connection's original destination (conntrack's `--ctorigdst`, the host's own address);
//! whether a client's connection gets that far is decided by the rules on the way in.

use std::process::Command;

use anyhow::Context;

/// Which cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutKind {
    /// Off from everyone.
    Isolated,
    /// Off from the consensus store and the other database hosts; the app hosts still reach it.
    Partitioned,
}

/// A host cut off until [`Cut::heal`] (or drop).
#[derive(Debug)]
pub struct Cut {
    chain: String,
    healed: bool,
}

/// The host being cut: its address and the OS user its processes run as.
#[derive(Debug, Clone)]
pub struct CutHost {
    /// Its name, for the chain's name.
    pub name: String,
    /// Its loopback address.
    pub address: String,
    /// Its processes' user id.
    pub uid: u32,
}

/// The `iptables` rules of a cut, in order, each as arguments after `-A <chain>`. `peers` are the
/// user ids of the hosts a partition keeps it from (the other database hosts).
fn rules(host: &CutHost, kind: CutKind, peers: &[u32]) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let uid = host.uid.to_string();
    let own = host.address.as_str();
    let mut rules = vec![
        // What it sends on connections made *to* it (by itself, or by clients: its answers),
        // told apart by the connection's original destination, since answers go to 127.0.0.1.
        s(&[
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-m",
            "conntrack",
            "--ctorigdst",
            own,
            "-j",
            "RETURN",
        ]),
        // Anything else it sends: connections it opens to other hosts (the store, the replica).
        s(&["-m", "owner", "--uid-owner", &uid, "-j", "DROP"]),
    ];
    match kind {
        // Whoever else sends to it.
        CutKind::Isolated => rules.push(s(&["-d", own, "-j", "DROP"])),
        // The other database hosts sending to it (replication, Patroni asking its API).
        CutKind::Partitioned => {
            for peer in peers {
                let peer = peer.to_string();
                rules.push(s(&[
                    "-m",
                    "owner",
                    "--uid-owner",
                    &peer,
                    "-d",
                    own,
                    "-j",
                    "DROP",
                ]));
            }
        }
    }
    rules
}

fn iptables(args: &[String]) -> anyhow::Result<()> {
    // `-w`: wait for the xtables lock rather than fail while Docker (or another cut) holds it.
    let output = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .context("running iptables (scripts/setup.sh installs it)")?;
    anyhow::ensure!(
        output.status.success(),
        "iptables {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

impl Cut {
    /// Cuts `host` off as `kind` says (`peers`: the other database hosts' user ids).
    pub fn start(host: &CutHost, kind: CutKind, peers: &[u32]) -> anyhow::Result<Cut> {
        let chain = Cut::chain(&host.name);
        anyhow::ensure!(chain.len() <= 28, "{chain}: too long for an iptables chain");
        // A cut left behind by a drill that died is removed first.
        let _ = Cut::remove(&chain);
        iptables(&["-N".into(), chain.clone()])?;
        let cut = Cut {
            chain: chain.clone(),
            healed: false,
        };
        for rule in rules(host, kind, peers) {
            let mut args = vec!["-A".to_owned(), chain.clone()];
            args.extend(rule);
            iptables(&args)?;
        }
        iptables(&["-I".into(), "OUTPUT".into(), "-j".into(), chain])?;
        Ok(cut)
    }

    /// Removes the cut of the host named `host` if one was left behind (a drill killed before it
    /// healed it); whether there was one.
    pub fn remove_left_over(host: &str) -> bool {
        let chain = Cut::chain(host);
        Command::new("iptables")
            .args(["-w", "-n", "-L", &chain])
            .output()
            .is_ok_and(|o| o.status.success())
            && Cut::remove(&chain).is_ok()
    }

    fn chain(host: &str) -> String {
        format!("archlab-cut-{host}")
    }

    fn remove(chain: &str) -> anyhow::Result<()> {
        // The jump may be there more than once if something went wrong: all of them.
        while iptables(&["-D".into(), "OUTPUT".into(), "-j".into(), chain.into()]).is_ok() {}
        iptables(&["-F".into(), chain.into()])?;
        iptables(&["-X".into(), chain.into()])
    }

    /// Heals the cut: the host's traffic flows again.
    pub fn heal(mut self) -> anyhow::Result<()> {
        self.healed = true;
        Cut::remove(&self.chain)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        if !self.healed {
            let _ = Cut::remove(&self.chain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> CutHost {
        CutHost {
            name: "db-1".into(),
            address: "127.0.0.21".into(),
            uid: 990,
        }
    }

    #[test]
    fn an_isolated_host_keeps_only_its_own_traffic() {
        let rules: Vec<String> = rules(&host(), CutKind::Isolated, &[991])
            .iter()
            .map(|r| r.join(" "))
            .collect();
        assert_eq!(
            rules,
            [
                "-m owner --uid-owner 990 -m conntrack --ctorigdst 127.0.0.21 -j RETURN",
                "-m owner --uid-owner 990 -j DROP",
                "-d 127.0.0.21 -j DROP",
            ]
        );
    }

    #[test]
    fn a_partitioned_host_is_cut_from_its_peers_only() {
        let rules: Vec<String> = rules(&host(), CutKind::Partitioned, &[991, 992])
            .iter()
            .map(|r| r.join(" "))
            .collect();
        assert_eq!(rules[1], "-m owner --uid-owner 990 -j DROP");
        assert_eq!(
            &rules[2..],
            [
                "-m owner --uid-owner 991 -d 127.0.0.21 -j DROP",
                "-m owner --uid-owner 992 -d 127.0.0.21 -j DROP",
            ]
        );
    }
}
