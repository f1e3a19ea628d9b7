//! Single-flight: when many requests miss the same key at once, one of them loads it and the rest
//! wait for that load instead of each asking the database.
//!
//! Without it, a popular article whose entry expires (or is invalidated by a favorite) causes a
//! *miss storm*: every request in that instant goes to the database for the same row. With it,
//! each app process loads a key at most once at a time. It also keeps protecting the database
//! while Redis is down, because the bypass path goes through it too.
//!
//! The loaded value is shared as its cache encoding (bytes), so one map serves every kind of entry.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use tokio::sync::OnceCell;

type Slot = Arc<OnceCell<Bytes>>;

/// Loads in flight, by key.
#[derive(Default)]
pub struct SingleFlight {
    in_flight: Mutex<HashMap<String, Slot>>,
}

impl SingleFlight {
    /// Runs `load` for `key` unless a load of `key` is already running, in which case it waits
    /// for that one's result. If the running load fails, the waiters do not share the error: the
    /// next one in line runs its own `load` (one at a time still).
    pub async fn run<E, F, Fut>(&self, key: &str, load: F) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let (slot, leader) = {
            let mut map = self.lock();
            match map.get(key) {
                Some(slot) => (slot.clone(), false),
                None => {
                    let slot = Slot::default();
                    map.insert(key.to_owned(), slot.clone());
                    (slot, true)
                }
            }
        };
        // Whoever created the slot removes it when done, even if its future is dropped midway
        // (client gone): the next request for the key then starts afresh.
        let _cleanup = leader.then(|| Cleanup {
            flight: self,
            key,
            slot: slot.clone(),
        });
        slot.get_or_try_init(load).await.cloned()
    }

    /// Keys being loaded now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Cleanup<'a> {
    flight: &'a SingleFlight,
    key: &'a str,
    slot: Slot,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let mut map = self.flight.lock();
        if map
            .get(self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            map.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn concurrent_misses_share_one_load() {
        let flight = Arc::new(SingleFlight::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (flight, loads) = (flight.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run("a:1", || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, ()>(Bytes::from_static(b"value"))
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(
                task.await.ok().and_then(Result::ok).as_deref(),
                Some(&b"value"[..])
            );
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(flight.in_flight(), 0, "the slot is removed after the load");
    }

    #[tokio::test]
    async fn a_failed_load_is_retried_by_the_next_waiter() {
        let flight = SingleFlight::default();
        let first: Result<Bytes, &str> = flight.run("k", || async { Err("database down") }).await;
        assert!(first.is_err());
        let second: Result<Bytes, &str> = flight
            .run("k", || async { Ok(Bytes::from_static(b"ok")) })
            .await;
        assert_eq!(second.as_deref().ok(), Some(&b"ok"[..]));
    }
}
