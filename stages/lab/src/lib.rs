//! # archlab: the native lab
//!
//! Brings an archlab stage up on this machine with real components, each "host" a set of local
//! processes on its own loopback address (127.10.<stage>.<n>), and stops exactly the processes it
//! started (PID files with start times; see [`process`]).
//!
//! - [`stage`]: stage files (`stages/NN-name/stage.toml`): hosts, roles, addresses, sizes;
//! - [`size`]: the one table of machine sizes, and the plan that fits the ladder on 2 cores;
//! - [`server`]: the one shape of every process the lab runs (start, ready, stop, running, log);
//! - [`topology`]: what an app host is told about its stage (database, cache, media, pool size);
//! - [`postgres`]: a PostgreSQL server as a local process (also [`postgres::TestPostgres`] for tests);
//! - [`replica`]: a streaming replica of a lab PostgreSQL server (stage 5's building block);
//! - [`files`]: the file host (nginx with WebDAV) of stage 2;
//! - [`cache`]: the cache host (Redis) of stage 3 on (also [`cache::TestRedis`] for tests);
//! - [`gateway`]: the gateway host (archlab's pingora load balancer) of stage 4 on;
//! - [`objects`]: the object store cluster (Garage nodes) of stage 7 on;
//! - [`consensus`]: what stage 8's consensus stores share (leaders, terms, endpoints);
//! - [`etcd`]: the consensus store (a three-member etcd cluster) of stage 8;
//! - [`zookeeper`]: the other one (a three-member ZooKeeper ensemble);
//! - [`patroni`]: stage 8's database hosts, PostgreSQL run by Patroni, failover by consensus;
//! - [`monitor`]: the monitoring host of `up --monitor` (Prometheus, exporters, live dashboard);
//! - [`lab`]: `up`, `down`, `status` over a state folder;
//! - [`bench`]: `bench`, `tour`, `compare`: measure stages with the harness;
//! - [`drill`]: `drill`: break a service under load and report what clients saw;
//! - [`failover`]: a stage 8 drill's timeline (fault, leader lost, new leader, first write);
//! - [`budget`]: host CPU budgets as cgroups, and CPU sampling per host;
//! - `main.rs`: the `archlab` command line.

pub mod bench;
pub mod budget;
pub mod cache;
pub mod consensus;
pub mod drill;
pub mod edge;
pub mod etcd;
pub mod failover;
pub mod files;
pub mod gateway;
pub mod history;
pub mod installed;
pub mod lab;
pub mod monitor;
pub mod objects;
pub mod partition;
pub mod patroni;
pub mod postgres;
pub mod process;
pub mod replica;
pub mod replication;
pub mod server;
pub mod size;
pub mod stage;
pub mod topology;
pub mod zookeeper;

pub use lab::Lab;
pub use stage::Stage;
