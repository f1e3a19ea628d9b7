//! From topology to settings: what an app host is told about the rest of its stage.
//!
//! A stage is a set of hosts; the app binary is the same everywhere. This module is the one place
//! that turns "which hosts does this stage have" into the app's `APP_…` settings: where the
//! database is and how many connections each app host may open to it, whether a cache host
//! exists, where media live, and whether a gateway stands in front (then the app drains before it
//! stops). Later stages plug in here: stage 5 adds replica URLs, stage 7 one URL per shard.
//!
//! Everything here is a pure function of the stage and a few endpoints, so it is unit-tested
//! without starting anything.

use std::path::Path;

use crate::stage::{Host, Role, Stage, APP_PORT};

/// Database connections per core of a database host's budget, all app hosts together. PostgreSQL
/// runs one process per connection, and past a few per core they only add context switches (an
/// informal comparison on the 2-core reference machine, stage 1, one-article reads at 64 clients:
/// a pool of 4 beat 8, which beat 16; not a recorded result).
pub const POOL_PER_DATABASE_CORE: f64 = 4.0;

/// The fewest connections a database host serves in all, whatever its size: a query also spends
/// time on the wire and in the app between statements, so a few more than the cores strictly
/// need keep the database busy. The ladder's 0.2-core database hosts land on this floor.
pub const MIN_POOL: u32 = 4;

/// The fewest connections one app host opens: one for a long request (a write's transaction) and
/// one for everything else, so one slow statement never stalls every request of the host.
pub const MIN_POOL_PER_APP_HOST: u32 = 2;

/// The longest an app host behind a gateway drains (not ready, still serving) on SIGTERM when
/// nobody ends the drain sooner. The lab's rolling restart ends it with a SIGINT as soon as the
/// gateway reports the host out of rotation, which takes 2 failed checks 1 s apart on an idle
/// machine and longer on a busy one; 30 s is far beyond that, and only matters for a SIGTERM
/// from something else (a user's `kill`, a container runtime).
pub const DRAIN_BOUND_MS: u64 = 30_000;

/// Login and registration attempts one client address may make at an app host, in the lab, at
/// once and per minute. Every simulated user of the harness sends from the same loopback address,
/// so the app's own per-client throttle (10 at once, 30 a minute) would refuse the benchmark's
/// registrations and logins as one client's; the lab raises it far above any stage's capacity,
/// as it does the edge's limit. The per-account throttle on failed logins keeps its default (the
/// harness's logins succeed). The app's tests check the 429 at the default.
pub const LAB_ATTEMPTS_PER_CLIENT: u32 = 1_000_000;

/// Where the stage's shared services answer, as the app hosts reach them.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoints {
    /// The primary database: every write, and reads when there are no replicas.
    pub database_url: String,
    /// The replicas reads may go to (stage 5 on; shard 0's in stage 7).
    pub replica_urls: Vec<String>,
    /// Stage 7: the replicas of shards 1, 2, ... (`shard_replica_urls[n - 1]` are shard `n`'s).
    pub shard_replica_urls: Vec<Vec<String>>,
    /// The primaries of shards 1, 2, ... (stage 7; `database_url` is shard 0).
    pub shard_urls: Vec<String>,
    /// Stage 8: every host the primary may move to, with its Patroni; the app follows whichever
    /// one Patroni names the leader. Empty before stage 8 (the primary is `database_url`).
    pub leader_candidates: Vec<LeaderCandidate>,
    /// The cache host's `redis://` URL, if the stage has one.
    pub cache_url: Option<String>,
    /// The file host, if the stage has one.
    pub files: Option<FilesEndpoint>,
    /// The edge PoPs, if the stage has them (stage 6 on).
    pub edges: Option<EdgesEndpoint>,
    /// The object store cluster, if the stage has one (stage 7 on): media go there, not to a
    /// file host.
    pub object_store: Option<ObjectStoreEndpoint>,
}

/// A database host the primary may move to (stage 8), as the app's
/// `database.leader_candidates` names it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderCandidate {
    /// Its PostgreSQL server, as the app connects.
    pub url: String,
    /// Its Patroni's REST API.
    pub patroni: String,
}

/// The object store as the app sees it: every node's S3 API and the app's key.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStoreEndpoint {
    /// Every node's S3 URL: any node answers for the whole cluster, so the app tries the next
    /// when one does not answer.
    pub s3_urls: Vec<String>,
    /// The app's key id.
    pub access_key_id: String,
    /// The app's secret.
    pub secret_access_key: String,
    /// Where clients read media: the stage's entry point, whose gateway sends `/media/…` to the
    /// object store's web endpoint.
    pub public_base_url: String,
}

/// The edge PoPs as the app sees them: where to send purges, and the key.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgesEndpoint {
    /// Every PoP's base URL.
    pub urls: Vec<String>,
    /// The key the PoPs accept purges with.
    pub purge_key: String,
}

/// The file host as the app sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FilesEndpoint {
    /// Base URL, for writes and for the links clients follow.
    pub url: String,
    /// The key writers must send.
    pub write_key: String,
}

/// The settings of the app on `host`, as `APP_…` variables.
pub fn app_env(
    stage: &Stage,
    host: &Host,
    endpoints: &Endpoints,
    jwt_secret: &str,
    media_root: &Path,
) -> Vec<(String, String)> {
    let mut env = vec![
        var("APP_SERVER__LISTEN", format!("{}:{APP_PORT}", host.address)),
        var("APP_DATABASE__URL", endpoints.database_url.clone()),
        var(
            "APP_DATABASE__MAX_CONNECTIONS",
            pool_size(stage).to_string(),
        ),
        var("APP_AUTH__JWT_SECRET", jwt_secret.to_owned()),
        // Without a file host, media live on the app host's own disk, here.
        var("APP_MEDIA__ROOT", media_root.display().to_string()),
    ];
    // With a file host, media go to it over HTTP, and clients read them from it directly.
    if let Some(files) = &endpoints.files {
        env.extend([
            var("APP_MEDIA__STORE", "http".into()),
            var("APP_MEDIA__URL", files.url.clone()),
            var("APP_MEDIA__PUBLIC_BASE_URL", files.url.clone()),
            var("APP_MEDIA__WRITE_KEY", files.write_key.clone()),
        ]);
    }
    // With an object store, media go to its S3 API, and clients read them through the stage's
    // entry point (the edge, then the gateway's media pool).
    if let Some(store) = &endpoints.object_store {
        let quoted: Vec<String> = store.s3_urls.iter().map(|url| format!("{url:?}")).collect();
        env.extend([
            var("APP_MEDIA__STORE", "s3".into()),
            var(
                "APP_MEDIA__S3__ENDPOINTS",
                format!("[{}]", quoted.join(", ")),
            ),
            var("APP_MEDIA__S3__BUCKET", crate::objects::BUCKET.into()),
            var("APP_MEDIA__S3__REGION", crate::objects::REGION.into()),
            var("APP_MEDIA__S3__ACCESS_KEY_ID", store.access_key_id.clone()),
            var(
                "APP_MEDIA__S3__SECRET_ACCESS_KEY",
                store.secret_access_key.clone(),
            ),
            var("APP_MEDIA__PUBLIC_BASE_URL", store.public_base_url.clone()),
        ]);
    }
    // With a cache host, the app reads through it (cache-aside).
    if let Some(url) = &endpoints.cache_url {
        env.extend([
            var("APP_CACHE__BACKEND", "redis".into()),
            var("APP_CACHE__URL", url.clone()),
        ]);
    }
    // A list of URLs as the app's settings read it (TOML's array of strings).
    let quoted = |urls: &[String]| {
        let quoted: Vec<String> = urls.iter().map(|url| format!("{url:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    // With shards, the app splits the data by author over them (stage 7).
    if !endpoints.shard_urls.is_empty() {
        env.push(var("APP_DATABASE__SHARDS", quoted(&endpoints.shard_urls)));
    }
    // With replicas, reads go to them; users' positions (read-your-writes) live in the cache
    // host's database 1, apart from the cache itself. Stage 7: shard 0's replicas as stage 5's,
    // the other shards' in a list of lists.
    let shards_replicated = endpoints.shard_replica_urls.iter().any(|r| !r.is_empty());
    if shards_replicated {
        let lists: Vec<String> = endpoints
            .shard_replica_urls
            .iter()
            .map(|urls| quoted(urls))
            .collect();
        env.push(var(
            "APP_DATABASE__SHARD_REPLICAS",
            format!("[{}]", lists.join(", ")),
        ));
    }
    if !endpoints.replica_urls.is_empty() || shards_replicated {
        if !endpoints.replica_urls.is_empty() {
            env.push(var(
                "APP_DATABASE__REPLICAS",
                quoted(&endpoints.replica_urls),
            ));
        }
        env.push(var(
            "APP_DATABASE__REPLICA_MAX_CONNECTIONS",
            replica_pool_size(stage).to_string(),
        ));
        if let Some(url) = &endpoints.cache_url {
            env.push(var("APP_DATABASE__POSITIONS_URL", format!("{url}/1")));
        }
    }
    // Stage 8: the primary pool follows whichever candidate Patroni names the leader.
    if !endpoints.leader_candidates.is_empty() {
        let tables: Vec<String> = endpoints
            .leader_candidates
            .iter()
            .map(|c| format!("{{url = {:?}, patroni = {:?}}}", c.url, c.patroni))
            .collect();
        env.push(var(
            "APP_DATABASE__LEADER_CANDIDATES",
            format!("[{}]", tables.join(", ")),
        ));
    }
    // Behind edges, every write purges what it changed at each PoP.
    if let Some(edges) = &endpoints.edges {
        let quoted: Vec<String> = edges.urls.iter().map(|url| format!("{url:?}")).collect();
        env.extend([
            var("APP_EDGE__PURGE_URLS", format!("[{}]", quoted.join(", "))),
            var("APP_EDGE__PURGE_KEY", edges.purge_key.clone()),
        ]);
    }
    env.extend([
        var(
            "APP_AUTH__CLIENT_ATTEMPT_BURST",
            LAB_ATTEMPTS_PER_CLIENT.to_string(),
        ),
        var(
            "APP_AUTH__CLIENT_ATTEMPTS_PER_MINUTE",
            LAB_ATTEMPTS_PER_CLIENT.to_string(),
        ),
    ]);
    // Behind a gateway, SIGTERM drains first (see [`DRAIN_BOUND_MS`]), and the client a throttle
    // counts is the one the gateway (and the edges before it) forwarded for.
    if !stage.hosts_with(Role::Gateway).is_empty() {
        env.push(var("APP_SERVER__DRAIN_MS", DRAIN_BOUND_MS.to_string()));
        let proxies: Vec<String> = stage
            .hosts_with(Role::Gateway)
            .into_iter()
            .chain(stage.hosts_with(Role::Edge))
            .map(|h| format!("{:?}", h.address))
            .collect();
        env.push(var(
            "APP_SERVER__TRUSTED_PROXIES",
            format!("[{}]", proxies.join(", ")),
        ));
    }
    // A measurement variant's own settings, last, so they win.
    env.extend(stage.app_settings.iter().cloned());
    env
}

/// Connections per app host: the database host's share ([`POOL_PER_DATABASE_CORE`] per core of
/// its budget, at least [`MIN_POOL`]) divided among the app hosts, at least
/// [`MIN_POOL_PER_APP_HOST`] each. The database's size bounds its connections, not the number of
/// app hosts in front of it: three app hosts before a 0.2-core database open 2 each, not 4 each.
pub fn pool_size(stage: &Stage) -> u32 {
    share_of(stage, stage.database_host().map_or(1.0, |h| h.cpu_budget))
}

/// Connections per app host to each replica: the same rule as [`pool_size`], from the size of
/// the smallest replica (they are bought alike; a `--budget` variant may make one smaller).
pub fn replica_pool_size(stage: &Stage) -> u32 {
    // Stage 8 reads from every Patroni host (whichever is a replica at the moment).
    let readers = if stage.patroni_hosts().is_empty() {
        stage.replica_hosts()
    } else {
        stage.patroni_hosts()
    };
    let cores = readers
        .iter()
        .map(|h| h.cpu_budget)
        .fold(f64::INFINITY, f64::min);
    share_of(stage, if cores.is_finite() { cores } else { 1.0 })
}

/// One app host's share of the connections a database server of `cores` serves.
fn share_of(stage: &Stage, cores: f64) -> u32 {
    let total = ((POOL_PER_DATABASE_CORE * cores).ceil() as u32).max(MIN_POOL);
    let apps = stage.app_hosts().len().max(1) as u32;
    total.div_ceil(apps).max(MIN_POOL_PER_APP_HOST)
}

fn var(key: &str, value: String) -> (String, String) {
    (key.to_owned(), value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::Layout;

    fn endpoints(cache: bool, files: bool) -> Endpoints {
        Endpoints {
            database_url: "postgres://conduit@127.10.9.2:5432/conduit".into(),
            replica_urls: Vec::new(),
            shard_replica_urls: Vec::new(),
            shard_urls: Vec::new(),
            leader_candidates: Vec::new(),
            cache_url: cache.then(|| "redis://127.10.9.4:6379".into()),
            files: files.then(|| FilesEndpoint {
                url: "http://127.10.9.3:8081".into(),
                write_key: "files-k".into(),
            }),
            edges: None,
            object_store: None,
        }
    }

    fn env_of(stage: &str, cache: bool, files: bool) -> Vec<(String, String)> {
        let stage = Stage::find(stage).unwrap();
        app_env(
            &stage,
            stage.app_hosts()[0],
            &endpoints(cache, files),
            "s",
            Path::new("/m"),
        )
    }

    fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Stage 8: the app is told every host the primary may move to, with its Patroni, in the
    /// form the app's settings read (`settings.rs` parses this very form); stages before have
    /// no such setting.
    #[test]
    fn stage_8_names_every_database_host_as_a_leader_candidate() {
        let stage = Stage::find("8").unwrap();
        let mut endpoints = endpoints(true, false);
        endpoints.leader_candidates = stage
            .patroni_hosts()
            .iter()
            .map(|h| LeaderCandidate {
                url: format!("postgres://conduit@{}:5432/conduit", h.address),
                patroni: format!("http://{}:8008", h.address),
            })
            .collect();
        let env = app_env(
            &stage,
            stage.app_hosts()[0],
            &endpoints,
            "s",
            Path::new("/m"),
        );
        assert_eq!(
            get(&env, "APP_DATABASE__LEADER_CANDIDATES"),
            Some(
                r#"[{url = "postgres://conduit@127.10.8.51:5432/conduit", patroni = "http://127.10.8.51:8008"}, {url = "postgres://conduit@127.10.8.52:5432/conduit", patroni = "http://127.10.8.52:8008"}]"#
            )
        );
        assert_eq!(
            get(&env_of("7", true, false), "APP_DATABASE__LEADER_CANDIDATES"),
            None
        );
    }

    #[test]
    fn the_monolith_keeps_media_on_its_disk_and_has_no_cache_and_no_drain() {
        let env = env_of("1", false, false);
        assert_eq!(get(&env, "APP_SERVER__LISTEN"), Some("127.10.1.1:8080"));
        assert_eq!(get(&env, "APP_MEDIA__ROOT"), Some("/m"));
        assert_eq!(get(&env, "APP_MEDIA__STORE"), None);
        assert_eq!(get(&env, "APP_CACHE__BACKEND"), None);
        assert_eq!(get(&env, "APP_SERVER__DRAIN_MS"), None);
        assert_eq!(
            get(&env, "APP_SERVER__TRUSTED_PROXIES"),
            None,
            "clients connect directly: no forwarded address is believed"
        );
    }

    #[test]
    fn a_file_host_and_a_cache_host_each_switch_one_seam() {
        let split = env_of("2", false, true);
        assert_eq!(get(&split, "APP_MEDIA__STORE"), Some("http"));
        assert_eq!(
            get(&split, "APP_MEDIA__PUBLIC_BASE_URL"),
            Some("http://127.10.9.3:8081")
        );
        assert_eq!(get(&split, "APP_MEDIA__WRITE_KEY"), Some("files-k"));
        assert_eq!(get(&split, "APP_CACHE__BACKEND"), None);
        let cache = env_of("3", true, true);
        assert_eq!(get(&cache, "APP_CACHE__BACKEND"), Some("redis"));
        assert_eq!(
            get(&cache, "APP_CACHE__URL"),
            Some("redis://127.10.9.4:6379")
        );
    }

    #[test]
    fn app_hosts_behind_a_gateway_drain_before_they_stop() {
        let env = env_of("4", true, true);
        assert_eq!(
            get(&env, "APP_SERVER__DRAIN_MS"),
            Some(DRAIN_BOUND_MS.to_string().as_str())
        );
        assert_eq!(get(&env, "APP_SERVER__LISTEN"), Some("127.10.4.11:8080"));
        assert_eq!(
            get(&env, "APP_SERVER__TRUSTED_PROXIES"),
            Some(r#"["127.10.4.1"]"#)
        );
        let behind_edges = env_of("6", true, true);
        assert_eq!(
            get(&behind_edges, "APP_SERVER__TRUSTED_PROXIES"),
            Some(r#"["127.10.6.1", "127.10.6.31", "127.10.6.32"]"#),
            "the gateway and both edges forward for clients"
        );
    }

    #[test]
    fn the_pool_follows_the_database_size_shared_by_the_app_hosts_with_a_floor() {
        let one = Stage::find("2").unwrap();
        // A 2-core database behind one app host: 8 connections.
        let big = one.clone().with_budget("db", 2.0).unwrap();
        assert_eq!(pool_size(&big), 8);
        // The same database behind four app hosts: 2 each, 8 in all.
        let four = Stage::find_with("4", Layout::app_hosts(4))
            .unwrap()
            .with_budget("db", 2.0)
            .unwrap();
        assert_eq!(pool_size(&four), 2);
        // A 4-core database behind two app hosts: 8 each.
        let two = Stage::find_with("4", Layout::app_hosts(2))
            .unwrap()
            .with_budget("db", 4.0)
            .unwrap();
        assert_eq!(pool_size(&two), 8);
        // The ladder's 0.2-core database: the whole floor for one app host (stages 1 to 3), and
        // shared by stage 4's two app hosts (2 each, 4 in all), never below 2 per host.
        assert_eq!(pool_size(&Stage::find("3").unwrap()), MIN_POOL);
        assert_eq!(pool_size(&Stage::find("4").unwrap()), MIN_POOL_PER_APP_HOST);
        let eight = Stage::find_with("4", Layout::app_hosts(8)).unwrap();
        assert_eq!(pool_size(&eight), MIN_POOL_PER_APP_HOST);
        for stage in Stage::all().unwrap() {
            let apps = stage.app_hosts().len() as u32;
            assert!(pool_size(&stage) >= MIN_POOL_PER_APP_HOST);
            assert!(pool_size(&stage) * apps >= MIN_POOL);
        }
    }
}
