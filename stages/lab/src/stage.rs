//! Stage files: a stage is data (`stages/NN-name/stage.toml`) naming its hosts, their roles,
//! loopback addresses and machine sizes ([`crate::size`]). The files are compiled into `archlab`,
//! so the binary works from any folder; the list below is the one place that names them.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{consensus::StoreKind, size::Size};

/// Every stage the lab knows, in order.
const STAGE_FILES: &[(&str, &str)] = &[
    ("01-monolith", include_str!("../../01-monolith/stage.toml")),
    ("02-split", include_str!("../../02-split/stage.toml")),
    ("03-cache", include_str!("../../03-cache/stage.toml")),
    ("04-cluster", include_str!("../../04-cluster/stage.toml")),
    ("05-replicas", include_str!("../../05-replicas/stage.toml")),
    ("06-edge", include_str!("../../06-edge/stage.toml")),
    (
        "07-distributed",
        include_str!("../../07-distributed/stage.toml"),
    ),
    (
        "08-consensus",
        include_str!("../../08-consensus/stage.toml"),
    ),
];

/// PostgreSQL's standard port; every database host keeps it on its own address.
pub const DATABASE_PORT: u16 = 5432;
/// The app's port on every app host.
pub const APP_PORT: u16 = 8080;

/// A stage: numbered, named, made of hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Position in the tour (1 = monolith).
    pub number: u8,
    /// Short name (`monolith`).
    pub name: String,
    /// One line saying what the stage adds.
    pub title: String,
    /// Its hosts.
    pub hosts: Vec<Host>,
    /// Folder name under `stages/` (filled in from the file list, not the file).
    #[serde(skip)]
    pub folder: String,
    /// How the gateway chooses an app host (`round_robin` or `least_loaded`) when a measurement
    /// variant says so ([`Stage::with_gateway_selection`]); otherwise the gateway's default.
    #[serde(skip)]
    pub gateway_selection: Option<String>,
    /// App settings a measurement variant changes on every app host, as `APP_…` variables
    /// ([`Stage::with_app_setting`]): `database.consistency = none` to show what the session
    /// guard prevents, say.
    #[serde(skip)]
    pub app_settings: Vec<(String, String)>,
    /// Whether the hosts' `distance` is emulated ([`Stage::with_distance`]). Off by default:
    /// the ladder measures every stage with its clients beside it, so capacities compare; the
    /// distance is shown on its own (`up --distance`, `bench --distance`).
    #[serde(skip)]
    pub emulate_distance: bool,
    /// The store the consensus hosts run, if the stage has any (stage 8: `up --dcs`).
    #[serde(skip)]
    pub dcs: StoreKind,
    /// The roles whose hosts the stage file buys as copies (`copies = n`): the host counts a
    /// [`Layout`] may change, and the only ones it records.
    #[serde(skip)]
    copied_roles: Vec<Role>,
}

/// A simulated host: one loopback address and one machine size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Name, unique within the stage.
    pub name: String,
    /// Its loopback address (127.0.0.0/8).
    pub address: String,
    /// Its machine size, from the one table of sizes.
    pub size: Size,
    /// Cores this host may use: its size's, unless a measurement variant (`--budget`) changed
    /// it. Filled in when the stage is read, never written in a stage file.
    #[serde(skip_deserializing, default)]
    pub cpu_budget: f64,
    /// What runs on it.
    pub roles: Vec<Role>,
    /// Identical copies of this host bought together (stage 4's app hosts): `name-1`, `name-2`,
    /// ... on consecutive addresses from `address` up. Absent: one host, named as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<u8>,
    /// How far this host is from its clients and from the origin (edge PoPs, stage 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<Distance>,
}

/// Emulated distance, for a host that stands somewhere else than the rest of the stage (an edge
/// PoP). Everything runs on one machine, so distance is a wait added where a real network would
/// add it, and said to be one: a lab knob, never a measured figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distance {
    /// The harness waits this long before each request its clients of this PoP send (the
    /// client-to-PoP round trip).
    pub client_ms: u64,
    /// The PoP waits this long before each request it sends to the origin (the PoP-to-origin
    /// round trip).
    pub origin_ms: u64,
}

/// What a host does in the architecture.
///
/// [`Role::START_ORDER`] is the one place that says in which order the lab starts them (a
/// service after what it depends on) and, reversed, stops them (a service before what it uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A PostgreSQL server.
    Database,
    /// The Conduit app.
    App,
    /// A file server (nginx with WebDAV) holding the media.
    Files,
    /// A Redis server the app hosts use as a read cache.
    Cache,
    /// The gateway (pingora load balancer) in front of the app hosts.
    Gateway,
    /// A PostgreSQL streaming replica of the stage's database, taking reads (stage 5 on).
    Replica,
    /// A CDN point of presence (pingora with a shared cache) in front of the gateway (stage 6 on).
    Edge,
    /// A node of the object store cluster (Garage) holding the media (stage 7 on).
    #[serde(rename = "object-store")]
    #[value(name = "object-store")]
    ObjectStore,
    /// A member of the consensus store (etcd or ZooKeeper, `up --dcs`) that decides which
    /// database host leads (stage 8).
    Consensus,
    /// A database host run by Patroni: PostgreSQL as the primary or as a streaming replica, as
    /// the leader key in the consensus store says; a replica is promoted when the primary is lost
    /// (stage 8).
    Patroni,
}

impl Role {
    /// Every role, each after the ones it depends on: Patroni keeps its leader key in the
    /// consensus store; a replica copies the database; the app
    /// needs its database, replicas, file host or object store, and cache; the gateway needs app
    /// hosts (and object-store nodes) to send to; an edge needs the gateway (its origin).
    pub const START_ORDER: [Role; 10] = [
        Role::Consensus,
        Role::Patroni,
        Role::Database,
        Role::Replica,
        Role::Files,
        Role::ObjectStore,
        Role::Cache,
        Role::App,
        Role::Gateway,
        Role::Edge,
    ];

    /// The role's name as in stage files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Database => "database",
            Role::App => "app",
            Role::Files => "files",
            Role::Cache => "cache",
            Role::Gateway => "gateway",
            Role::Replica => "replica",
            Role::Edge => "edge",
            Role::ObjectStore => "object-store",
            Role::Consensus => "consensus",
            Role::Patroni => "patroni",
        }
    }
}

impl Stage {
    /// Every stage, in order.
    pub fn all() -> anyhow::Result<Vec<Stage>> {
        STAGE_FILES
            .iter()
            .map(|(folder, text)| Stage::parse(folder, text))
            .collect()
    }

    /// Parses and checks one stage file.
    pub fn parse(folder: &str, text: &str) -> anyhow::Result<Stage> {
        Self::parse_with(folder, text, Layout::default())
    }

    /// Parses one stage file with the copies `layout` asks for (`--app-hosts`, `--replicas`),
    /// or as many as the file says.
    pub fn parse_with(folder: &str, text: &str, layout: Layout) -> anyhow::Result<Stage> {
        let mut stage: Stage =
            toml::from_str(text).with_context(|| format!("parsing stages/{folder}/stage.toml"))?;
        stage.folder = folder.to_owned();
        for host in &mut stage.hosts {
            host.cpu_budget = host.size.cores();
        }
        stage.copied_roles = stage
            .hosts
            .iter()
            .filter(|h| h.copies.is_some())
            .flat_map(|h| h.roles.iter().copied())
            .collect();
        for (role, wanted, option, range) in [
            (
                Role::App,
                layout.app_hosts,
                "--app-hosts",
                Layout::APP_HOSTS,
            ),
            (
                Role::Replica,
                layout.replicas,
                "--replicas",
                Layout::REPLICAS,
            ),
            (Role::Database, layout.shards, "--shards", Layout::SHARDS),
        ] {
            let Some(n) = wanted else { continue };
            if role == Role::Replica && stage.sets_replicas_as_patroni_hosts() {
                stage.set_patroni_replicas(n)?;
                continue;
            }
            let copied = stage
                .hosts
                .iter_mut()
                .find(|h| h.copies.is_some() && h.roles.contains(&role));
            match copied {
                Some(host) if range.contains(&n) => host.copies = Some(n),
                Some(_) => bail!(
                    "{option} must be between {} and {}",
                    range.start(),
                    range.end()
                ),
                None => bail!(
                    "stage {} has no {} hosts to copy: {option} applies to stages that do",
                    stage.number,
                    role.as_str()
                ),
            }
        }
        if let Some(kind) = layout.dcs {
            if !stage
                .hosts
                .iter()
                .any(|h| h.roles.contains(&Role::Consensus))
            {
                bail!(
                    "stage {} has no consensus hosts: --dcs applies to stage 8",
                    stage.number
                );
            }
            stage.dcs = kind;
        }
        stage.hosts = stage
            .hosts
            .into_iter()
            .flat_map(expand)
            .collect::<Result<_, _>>()?;
        stage.check()?;
        Ok(stage)
    }

    /// Whether `--replicas` counts Patroni hosts (stage 8): there no host is a replica by the
    /// stage file; Patroni makes one of its hosts the primary and the others replicas, and which
    /// is which changes with every failover. So `--replicas n` buys `n + 1` database hosts.
    fn sets_replicas_as_patroni_hosts(&self) -> bool {
        self.copied_roles.contains(&Role::Patroni) && !self.copied_roles.contains(&Role::Replica)
    }

    /// `--replicas n` on a stage whose database hosts Patroni runs: `n + 1` of them.
    ///
    /// At least one replica: a Patroni cluster of one host has nobody to fail over to. Each
    /// replica is a whole database host, as large as the primary, since any of them may have to
    /// carry every write; the stage file's two are the least that survive a loss, a third is
    /// what "N+1" means for the database (the survivors of a loss still share the reads, and a
    /// synchronous standby is there for the new primary at once). Stage 8's README has crash
    /// trials with three hosts, run before its poller fix; the standby case is not measured.
    fn set_patroni_replicas(&mut self, n: u8) -> anyhow::Result<()> {
        let range = Layout::PATRONI_REPLICAS;
        anyhow::ensure!(
            range.contains(&n),
            "--replicas must be between {} and {} on stage {} (Patroni needs a replica to fail \
             over to)",
            range.start(),
            range.end(),
            self.number
        );
        let host = self
            .hosts
            .iter_mut()
            .find(|h| h.copies.is_some() && h.roles.contains(&Role::Patroni))
            .context("no copied Patroni host")?;
        host.copies = Some(n + 1);
        Ok(())
    }

    /// [`Stage::find`] with the copies `layout` asks for.
    pub fn find_with(key: &str, layout: Layout) -> anyhow::Result<Stage> {
        let found = Self::find(key)?;
        if layout == Layout::default() {
            return Ok(found);
        }
        let (folder, text) = STAGE_FILES
            .iter()
            .find(|(folder, _)| *folder == found.folder)
            .context("stage file vanished")?;
        Self::parse_with(folder, text, layout)
    }

    /// How many app hosts it has.
    pub fn app_host_count(&self) -> usize {
        self.app_hosts().len()
    }

    /// Its copied hosts as counted: what `up` records, so `down` and `status` find every one.
    /// A role the stage file does not copy is not counted (stage 4 has no replicas to set).
    pub fn layout(&self) -> Layout {
        let count = |role: Role| {
            self.copied_roles
                .contains(&role)
                .then(|| u8::try_from(self.hosts_with(role).len()).ok())
                .flatten()
        };
        let replicas = if self.sets_replicas_as_patroni_hosts() {
            count(Role::Patroni).map(|hosts| hosts.saturating_sub(1))
        } else {
            count(Role::Replica)
        };
        Layout {
            app_hosts: count(Role::App),
            replicas,
            shards: count(Role::Database),
            dcs: (!self.hosts_with(Role::Consensus).is_empty()).then_some(self.dcs),
        }
    }

    /// Finds a stage by number (`1`), name (`monolith`) or folder (`01-monolith`).
    pub fn find(key: &str) -> anyhow::Result<Stage> {
        let all = Stage::all()?;
        let wanted = key.trim_start_matches('0');
        all.iter()
            .find(|s| s.number.to_string() == wanted || s.name == key || s.folder == key)
            .cloned()
            .with_context(|| {
                let known: Vec<String> = all
                    .iter()
                    .map(|s| format!("{} ({})", s.number, s.name))
                    .collect();
                format!("no stage {key:?}; implemented stages: {}", known.join(", "))
            })
    }

    fn check(&self) -> anyhow::Result<()> {
        let mut names = std::collections::HashSet::new();
        for host in &self.hosts {
            if !names.insert(&host.name) {
                bail!(
                    "stage {}: host name {:?} used twice",
                    self.number,
                    host.name
                );
            }
            let ip: std::net::Ipv4Addr = host
                .address
                .parse()
                .with_context(|| format!("host {}: address {:?}", host.name, host.address))?;
            if !ip.is_loopback() {
                bail!("host {}: {} is not a loopback address", host.name, ip);
            }
            if !(host.cpu_budget >= crate::budget::MIN_CORES && host.cpu_budget <= 64.0) {
                bail!(
                    "host {}: cpu_budget must be in [{}, 64] cores",
                    host.name,
                    crate::budget::MIN_CORES
                );
            }
        }
        if self.database_host().is_none() || self.app_hosts().is_empty() {
            bail!(
                "stage {}: needs a database host and at least one app host",
                self.number
            );
        }
        Ok(())
    }

    /// The stage without its `role` hosts (a measurement variant, e.g. stage 4 without its cache
    /// to make the app tier the bottleneck). The database and app roles cannot go.
    pub fn without(mut self, role: Role) -> anyhow::Result<Stage> {
        if matches!(
            role,
            Role::Database | Role::App | Role::Patroni | Role::Consensus
        ) {
            bail!("a stage cannot run without its {} hosts", role.as_str());
        }
        self.hosts.retain(|h| !h.roles.contains(&role));
        Ok(self)
    }

    /// The stage with its hosts' distances emulated: the edge PoPs wait their `origin_ms`
    /// before each request to the origin, and the harness waits `client_ms` before each request
    /// of their clients.
    pub fn with_distance(mut self) -> anyhow::Result<Stage> {
        if self.hosts.iter().all(|h| h.distance.is_none()) {
            bail!(
                "stage {} has no host at a distance (edges come in stage 6)",
                self.number
            );
        }
        self.emulate_distance = true;
        Ok(self)
    }

    /// How far `host` is, as this stage emulates it: its stage file's `distance` when distance
    /// is emulated, else none.
    pub fn distance_of(&self, host: &Host) -> Distance {
        match host.distance {
            Some(d) if self.emulate_distance => d,
            _ => Distance {
                client_ms: 0,
                origin_ms: 0,
            },
        }
    }

    /// The stage with its gateway choosing app hosts by `selection` (a measurement variant:
    /// round robin against least loaded with one slow host, say).
    pub fn with_gateway_selection(mut self, selection: &str) -> anyhow::Result<Stage> {
        if self.gateway_host().is_none() {
            bail!("stage {} has no gateway", self.number);
        }
        if !matches!(selection, "round_robin" | "least_loaded") {
            bail!("gateway selection {selection:?}: round_robin or least_loaded");
        }
        self.gateway_selection = Some(selection.to_owned());
        Ok(self)
    }

    /// The stage with the app setting `key` (`section.name`, as in the app's settings file) set
    /// to `value` on every app host. The app checks the value when it starts.
    pub fn with_app_setting(mut self, key: &str, value: &str) -> anyhow::Result<Stage> {
        let Some((section, name)) = key.split_once('.') else {
            bail!("app setting {key:?}: section.name, e.g. database.consistency");
        };
        let valid =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if !valid(section) || !valid(name) {
            bail!("app setting {key:?}: lower-case letters and _ only");
        }
        let var = format!(
            "APP_{}__{}",
            section.to_ascii_uppercase(),
            name.to_ascii_uppercase()
        );
        self.app_settings.push((var, value.to_owned()));
        Ok(self)
    }

    /// The stage with the hosts named `name` (or `name-1`, `name-2`, ... for a copied host)
    /// given `cores` each (a measurement variant: equal-cost comparisons, say).
    pub fn with_budget(mut self, name: &str, cores: f64) -> anyhow::Result<Stage> {
        let mut found = false;
        for host in &mut self.hosts {
            let copy = host
                .name
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|n| n.parse::<u8>().is_ok());
            if host.name == name || copy {
                host.cpu_budget = cores;
                found = true;
            }
        }
        if !found {
            bail!("stage {} has no host {name:?}", self.number);
        }
        self.check()?;
        Ok(self)
    }

    /// The database replicas (stage 5 on), in stage-file order.
    pub fn replica_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Role::Replica)
    }

    /// The database host `replica` follows: replicas are dealt to the database hosts in turn,
    /// the first to shard 0, the next to shard 1, and so on round (stage 7: `--replicas 2` with
    /// two shards gives each shard one); before stage 7 there is one database host, so every
    /// replica follows it. `None` for a host that is not a replica, or a stage without a
    /// database host.
    pub fn primary_of(&self, replica: &Host) -> Option<&Host> {
        let index = self
            .replica_hosts()
            .iter()
            .position(|h| h.name == replica.name)?;
        let databases = self.database_hosts();
        databases.get(index % databases.len().max(1)).copied()
    }

    /// The replicas that follow shard `shard`'s database host (the only one before stage 7).
    pub fn replicas_of(&self, shard: usize) -> Vec<&Host> {
        let databases = self.database_hosts();
        self.replica_hosts()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !databases.is_empty() && i % databases.len() == shard)
            .map(|(_, h)| h)
            .collect()
    }

    /// The host with the gateway role, if the stage has one.
    pub fn gateway_host(&self) -> Option<&Host> {
        self.hosts.iter().find(|h| h.roles.contains(&Role::Gateway))
    }

    /// The same stage on another loopback network: every host address `127.A.B.C` becomes
    /// `127.<net>.B.C`. Lets two labs (a developer's and a test's) run side by side.
    pub fn on_network(mut self, net: u8) -> Stage {
        for host in &mut self.hosts {
            let mut octets: Vec<&str> = host.address.split('.').collect();
            if octets.len() == 4 {
                let net = net.to_string();
                octets[1] = &net;
                host.address = octets.join(".");
            }
        }
        self
    }

    /// The hosts with `role`, in stage-file order.
    pub fn hosts_with(&self, role: Role) -> Vec<&Host> {
        self.hosts
            .iter()
            .filter(|h| h.roles.contains(&role))
            .collect()
    }

    /// The hosts with the database role: one primary before stage 7; from stage 7 each is a
    /// shard's primary, shard 0 first (it also holds the user directory).
    pub fn database_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Role::Database)
    }

    /// The database host every write goes to: the first one (the only one before stage 5). In
    /// stage 8, the first Patroni host: it bootstraps the cluster as its first primary, and the
    /// app hosts then follow whichever host leads.
    pub fn database_host(&self) -> Option<&Host> {
        let first = |role| self.hosts.iter().find(|h| h.roles.contains(&role));
        first(Role::Database).or_else(|| first(Role::Patroni))
    }

    /// The database hosts Patroni runs (stage 8), in stage-file order: the first bootstraps.
    pub fn patroni_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Role::Patroni)
    }

    /// The consensus store's members (stage 8).
    pub fn consensus_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Role::Consensus)
    }

    /// Cores of all its hosts: what the stage costs.
    ///
    /// Rounded to a thousandth of a core (finer than any size or `--budget` a stage is given), so
    /// that 0.2 + 0.2 + 0.2 + 0.2 + 0.05 + 0.05 reads 0.9 in results and progress lines, not
    /// 0.9000000000000001.
    pub fn total_cores(&self) -> f64 {
        let sum: f64 = self.hosts.iter().map(|h| h.cpu_budget).sum();
        (sum * 1000.0).round() / 1000.0
    }

    /// The host with the files role, if the stage has one (else media stay on the app host).
    pub fn files_host(&self) -> Option<&Host> {
        self.hosts.iter().find(|h| h.roles.contains(&Role::Files))
    }

    /// The host with the cache role, if the stage has one.
    pub fn cache_host(&self) -> Option<&Host> {
        self.hosts.iter().find(|h| h.roles.contains(&Role::Cache))
    }

    /// The object store's nodes (stage 7 on), in stage-file order.
    pub fn object_store_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Role::ObjectStore)
    }

    /// Hosts with the app role.
    pub fn app_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Role::App)
    }

    /// Hosts with the edge role (stage 6 on), the PoP nearest the origin first.
    pub fn edge_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Role::Edge)
    }

    /// The stage's public entry point: what clients and the load harness talk to (the first edge
    /// PoP when there are edges, else the gateway when there is one, else the app host).
    pub fn endpoint(&self) -> String {
        let front = self
            .edge_hosts()
            .first()
            .copied()
            .or(self.gateway_host())
            .unwrap_or(self.app_hosts()[0]);
        format!("http://{}:{APP_PORT}", front.address)
    }
}

/// How many copies of a stage's copied hosts to run (`up --app-hosts N --replicas M`); `None`:
/// as the stage file says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// App hosts behind the gateway (stage 4 on).
    pub app_hosts: Option<u8>,
    /// Database replicas (stage 5 on).
    pub replicas: Option<u8>,
    /// Database shards, each its own primary (stage 7 on). Absent in layouts recorded before
    /// stage 7 existed.
    #[serde(default)]
    pub shards: Option<u8>,
    /// The consensus store (stage 8 on). Absent in layouts recorded before stage 8 existed.
    #[serde(default)]
    pub dcs: Option<StoreKind>,
}

impl Layout {
    /// App hosts a stage may have: at least one to serve; eight fill the machine's cores many
    /// times over at the large size.
    pub const APP_HOSTS: std::ops::RangeInclusive<u8> = 1..=8;
    /// Replicas: none (the primary alone, to compare with) to four; four large replicas beside
    /// stage 5's other hosts and the harness use 1.95 of the machine's 2 cores.
    pub const REPLICAS: std::ops::RangeInclusive<u8> = 0..=4;
    /// Replicas beside the primary where Patroni runs the database hosts (stage 8): one to
    /// three. Four large database hosts (0.8 core) beside stage 8's other hosts already run
    /// past the machine's 2 cores with the harness; more would measure the machine.
    pub const PATRONI_REPLICAS: std::ops::RangeInclusive<u8> = 1..=3;
    /// Shards: one (to compare with, all data on one primary) to four; four large primaries
    /// beside stage 7's other hosts and the harness still fit the machine's 2 cores
    /// (`crate::size`).
    pub const SHARDS: std::ops::RangeInclusive<u8> = 1..=4;

    /// Only the app host count.
    pub fn app_hosts(n: u8) -> Self {
        Self {
            app_hosts: Some(n),
            ..Self::default()
        }
    }

    /// Only the replica count.
    pub fn replicas(n: u8) -> Self {
        Self {
            replicas: Some(n),
            ..Self::default()
        }
    }
}

/// A host with `copies = n` becomes `n` hosts `name-1` .. `name-n` on consecutive addresses.
fn expand(host: Host) -> Vec<anyhow::Result<Host>> {
    let Some(n) = host.copies else {
        return vec![Ok(host)];
    };
    (0..n)
        .map(|i| {
            let ip: std::net::Ipv4Addr = host
                .address
                .parse()
                .with_context(|| format!("host {}: address {:?}", host.name, host.address))?;
            let mut octets = ip.octets();
            octets[3] = octets[3]
                .checked_add(i)
                .with_context(|| format!("host {}: addresses run past .255", host.name))?;
            Ok(Host {
                name: format!("{}-{}", host.name, i + 1),
                address: std::net::Ipv4Addr::from(octets).to_string(),
                copies: None,
                ..host.clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `up` records and `status` reads back: a layout found again from itself, for every
    /// stage and for a stage 4 grown to three app hosts (whose layout once named zero replicas,
    /// which stage 4 cannot set).
    #[test]
    fn a_recorded_layout_finds_the_same_stage_again() {
        let grown = Stage::find_with("4", Layout::app_hosts(3)).unwrap();
        for stage in Stage::all().unwrap().into_iter().chain([grown]) {
            let again = Stage::find_with(&stage.folder, stage.layout()).unwrap();
            assert_eq!(again.layout(), stage.layout(), "stage {}", stage.number);
            assert_eq!(
                again.hosts.len(),
                stage.hosts.len(),
                "stage {}",
                stage.number
            );
        }
        assert_eq!(Stage::find("1").unwrap().layout(), Layout::default());
        let five = Stage::find_with("5", Layout::replicas(0)).unwrap();
        assert_eq!(five.layout().replicas, Some(0));
        let seven = Stage::find_with(
            "7",
            Layout {
                shards: Some(4),
                ..Layout::default()
            },
        )
        .unwrap();
        assert_eq!(seven.database_hosts().len(), 4);
        assert_eq!(seven.layout().shards, Some(4));
        // Stage 8: `--replicas` counts the Patroni hosts beside the first.
        let eight = Stage::find_with("8", Layout::replicas(2)).unwrap();
        assert_eq!(eight.patroni_hosts().len(), 3);
        assert_eq!(eight.layout().replicas, Some(2));
        assert_eq!(Stage::find("8").unwrap().layout().replicas, Some(1));
        assert!(Stage::find_with("8", Layout::replicas(0)).is_err());
        assert!(Stage::find_with(
            "5",
            Layout {
                shards: Some(2),
                ..Layout::default()
            }
        )
        .is_err());
    }

    #[test]
    fn every_stage_file_parses_and_is_found_by_number_and_name() {
        let all = Stage::all().unwrap();
        assert_eq!(all[0].number, 1);
        assert_eq!(Stage::find("1").unwrap().name, "monolith");
        assert_eq!(Stage::find("01").unwrap().name, "monolith");
        assert_eq!(Stage::find("monolith").unwrap().number, 1);
        assert!(Stage::find("99").is_err());
        assert_eq!(
            Stage::find("1").unwrap().endpoint(),
            "http://127.10.1.1:8080"
        );
        assert_eq!(
            Stage::find("1").unwrap().on_network(77).endpoint(),
            "http://127.77.1.1:8080"
        );
    }

    #[test]
    fn copied_hosts_expand_on_consecutive_addresses() {
        let text = r#"
            number = 9
            name = "cluster"
            title = "t"
            [[hosts]]
            name = "db"
            address = "127.10.9.2"
            size = "large"
            roles = ["database"]
            [[hosts]]
            name = "app"
            address = "127.10.9.11"
            size = "medium"
            roles = ["app"]
            copies = 3
        "#;
        let stage = Stage::parse("09-cluster", text).unwrap();
        let apps: Vec<(&str, &str)> = stage
            .app_hosts()
            .iter()
            .map(|h| (h.name.as_str(), h.address.as_str()))
            .collect();
        assert_eq!(
            apps,
            [
                ("app-1", "127.10.9.11"),
                ("app-2", "127.10.9.12"),
                ("app-3", "127.10.9.13")
            ]
        );
        let two = Stage::parse_with("09-cluster", text, Layout::app_hosts(2)).unwrap();
        assert_eq!(two.app_host_count(), 2);
        assert!(Stage::parse_with("09-cluster", text, Layout::app_hosts(9)).is_err());
        assert!(Stage::parse_with("09-cluster", text, Layout::app_hosts(0)).is_err());
    }

    #[test]
    fn measurement_variants_check_what_they_change() {
        let cluster = Stage::find("4").unwrap();
        let variant = cluster
            .clone()
            .with_gateway_selection("least_loaded")
            .unwrap()
            .with_budget("app-1", 0.05)
            .unwrap();
        assert_eq!(variant.gateway_selection.as_deref(), Some("least_loaded"));
        let budgets: Vec<f64> = variant.app_hosts().iter().map(|h| h.cpu_budget).collect();
        let size = cluster.app_hosts()[1].size.cores();
        assert_eq!(budgets, [0.05, size], "only app-1 changes");
        assert!(cluster.clone().with_gateway_selection("random").is_err());
        assert!(
            cluster.with_budget("app", 0.001).is_err(),
            "under the floor"
        );
        let monolith = Stage::find("1").unwrap();
        assert!(
            monolith.with_gateway_selection("round_robin").is_err(),
            "no gateway"
        );
    }

    #[test]
    fn each_stage_buys_hosts_and_every_stage_fits_the_machine_with_the_harness() {
        let all = Stage::all().unwrap();
        for pair in all.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            assert!(
                after.hosts.len() > before.hosts.len(),
                "stage {} adds hosts",
                after.number
            );
            // Each stage costs more than the one before, until the machine is full: from stage
            // 7 on, hosts are resized to fit beside the harness (its stage file says which).
            if after.number < 7 {
                assert!(after.total_cores() > before.total_cores());
            }
        }
        for stage in &all {
            for host in &stage.hosts {
                assert_eq!(host.cpu_budget, host.size.cores(), "{}", host.name);
            }
            assert!(
                stage.total_cores() + crate::size::HARNESS_CORES <= 2.0,
                "stage {} with the harness must fit the 2-core machine",
                stage.number
            );
        }
    }

    #[test]
    fn non_loopback_hosts_are_refused() {
        let text = r#"
            number = 9
            name = "bad"
            title = "bad"
            [[hosts]]
            name = "h"
            address = "10.0.0.1"
            size = "large"
            roles = ["database", "app"]
        "#;
        assert!(Stage::parse("09-bad", text).is_err());
    }
}
