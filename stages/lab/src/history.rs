//! Stage 8 drills: is the app, through a failover, still one register per key? A history of
//! reads and writes, recorded from outside, checked for linearizability.
//!
//! The harness's own check counts acknowledged writes missing at the end. This one asks more:
//! whether every read, *while* the fault happens, could have happened in some single order
//! consistent with real time, each read returning the latest write before it. A failover that
//! loses an acknowledged write, or a read served by a server that has not seen a write already
//! acknowledged, breaks that (a read returns an older value after a newer one was acknowledged).
//!
//! The keys are registers designed for checking: each is one user's `bio`, written with unique
//! values (`PUT /api/user`) and read back (`GET /api/user`) by several clients sharing that user's
//! token, so their operations overlap in time. How operations are recorded (ok, fail, unknown)
//! and checked is [`loadtest::linearizability`], which the consensus crate's protocols, run as
//! processes over UDP, are checked with too.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context;
use loadtest::linearizability::{self, Outcome, Recorded, Recorder, RegisterOp};
use loadtest::report::Linearizability;
use serde_json::json;

/// Registers checked: enough that a fault catches some in the middle of a write, few enough that
/// each key's history keeps several clients overlapping.
pub const KEYS: usize = 4;

/// Clients per key: two overlapping clients are what makes a history more than a sequence.
pub const CLIENTS_PER_KEY: usize = 2;

/// Pause between one client's operations: 8 clients at about 5 operations a second each add
/// about 40 requests a second to the drill's load, a fraction of it.
const PAUSE: Duration = Duration::from_millis(200);

/// One operation's timeout: past it the outcome is unknown. A frozen primary holds a write for
/// as long as it is frozen; five seconds keeps a client from waiting out a whole outage on one.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Records the registers' history while a drill runs.
pub struct RegisterClients {
    endpoint: String,
    tokens: Vec<String>,
}

/// A value a writer sends, and how it reads back: `register value 17`.
fn bio(value: u32) -> String {
    format!("register value {value}")
}

fn value_of(bio: &serde_json::Value) -> Result<Option<u32>, ()> {
    match bio {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => s
            .strip_prefix("register value ")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or(()),
        _ => Err(()),
    }
}

/// Whether a refused write certainly did not happen: the app says so only when it refused before
/// sending anything to the database (no primary known, or no connection free in time). Every
/// other error may have come after the commit.
fn certainly_refused(status: reqwest::StatusCode, body: &str) -> bool {
    status.is_client_error()
        || (status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && (body.contains("primary down: writes refused") || body.contains("busy, try again")))
}

impl RegisterClients {
    /// Registers the registers' users on the stage at `endpoint`.
    pub async fn prepare(endpoint: &str) -> anyhow::Result<Self> {
        let mut tokens = Vec::new();
        for key in 0..KEYS {
            tokens.push(
                crate::failover::register_drill_user(endpoint, &format!("register-{key}")).await?,
            );
        }
        Ok(Self {
            endpoint: endpoint.to_owned(),
            tokens,
        })
    }

    /// Runs the clients for `duration`, or until the drill's load is stopped early
    /// ([`loadtest::run::Live::stop`]), and returns every operation they made.
    pub async fn record(
        &self,
        duration: Duration,
        load: &Arc<loadtest::run::Live>,
    ) -> anyhow::Result<Vec<Recorded>> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(OP_TIMEOUT)
            .build()?;
        let recorder = Arc::new(Recorder::new());
        let values = Arc::new(AtomicU64::new(1));
        let mut tasks = Vec::new();
        for client in 0..KEYS * CLIENTS_PER_KEY {
            let key = client % KEYS;
            let (http, recorder, values) = (http.clone(), recorder.clone(), values.clone());
            let load = load.clone();
            let url = format!("{}/api/user", self.endpoint);
            let token = format!("Token {}", self.tokens[key]);
            tasks.push(tokio::spawn(async move {
                // Reads and writes in a fixed pseudo-random pattern (a xorshift per client).
                let mut pattern = 0x9e37_79b9_u32 ^ (client as u32 + 1);
                while recorder.elapsed() < duration && !load.stop.load(Ordering::Relaxed) {
                    pattern ^= pattern << 13;
                    pattern ^= pattern >> 17;
                    pattern ^= pattern << 5;
                    let write = pattern.is_multiple_of(2);
                    let invocation = recorder.invoke();
                    let (op, outcome) = if write {
                        let value = values.fetch_add(1, Ordering::SeqCst) as u32;
                        let sent = http
                            .put(&url)
                            .header("authorization", &token)
                            .json(&json!({"user": {"bio": bio(value)}}))
                            .send()
                            .await;
                        let outcome = match sent {
                            Ok(r) if r.status().is_success() => Outcome::Ok,
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                if certainly_refused(status, &body) {
                                    Outcome::Fail
                                } else {
                                    Outcome::Unknown
                                }
                            }
                            Err(_) => Outcome::Unknown,
                        };
                        (RegisterOp::Write(value), outcome)
                    } else {
                        let read = async {
                            let r = http.get(&url).header("authorization", &token).send().await;
                            let r = r.ok().filter(|r| r.status().is_success())?;
                            let body: serde_json::Value = r.json().await.ok()?;
                            Some(value_of(&body["user"]["bio"]))
                        };
                        match read.await {
                            Some(Ok(value)) => (RegisterOp::Read(value), Outcome::Ok),
                            // A bio that is not a register value: recorded as a read of a value
                            // nobody wrote, so the checker and the witnesses both see it.
                            Some(Err(())) => (RegisterOp::Read(Some(u32::MAX)), Outcome::Ok),
                            None => (RegisterOp::Read(None), Outcome::Unknown),
                        }
                    };
                    recorder.complete(invocation, key, client, op, outcome);
                    tokio::time::sleep(PAUSE).await;
                }
            }));
        }
        for task in tasks {
            task.await.context("a register client")?;
        }
        Ok(recorder.take())
    }
}

/// How long the checker may take for all keys together. A few thousand operations take well
/// under a second; many unknown writes can make the search exponential, and then the verdict
/// is "undecided" rather than a drill that never ends.
const CHECK_BOUND: Duration = Duration::from_secs(60);

/// Checks each key's history; the verdict for the report.
pub async fn check(ops: Vec<Recorded>) -> Linearizability {
    tokio::task::spawn_blocking(move || linearizability::check(ops, KEYS, CHECK_BOUND))
        .await
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_refusing_before_the_database_is_a_certain_failure_and_nothing_else_is() {
        use reqwest::StatusCode;
        let down = r#"{"errors":{"database":["primary down: writes refused, reads served"]}}"#;
        assert!(certainly_refused(StatusCode::SERVICE_UNAVAILABLE, down));
        let moving = r#"{"errors":{"database":["the primary is moving, try again"]}}"#;
        assert!(!certainly_refused(StatusCode::SERVICE_UNAVAILABLE, moving));
        assert!(!certainly_refused(StatusCode::BAD_GATEWAY, ""));
        assert!(certainly_refused(StatusCode::UNPROCESSABLE_ENTITY, ""));
    }
}
