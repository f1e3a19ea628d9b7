//! The edge's shared cache: bounded, sharded, purgeable by tag.
//!
//! pingora-cache decides *when* to look up, fill and revalidate; this module decides *where* a
//! response lives. It implements pingora's `Storage` trait with:
//!
//! - **a byte cap**: every entry counts its body and its header; past `max_bytes` the least
//!   recently used entries go (LRU, one list per shard, each shard holding its share of the cap);
//! - **a largest object**: a response above `max_object_bytes` is passed through, never stored;
//! - **parsed headers**: an entry keeps its response header as pingora's `ResponseHeader`, so a
//!   hit clones a header map, where pingora's `MemCache` (documented as for tests) deserialises
//!   and decompresses one on every hit, under one global lock;
//! - **surrogate keys**: the origin names what a response shows (`Surrogate-Key: article:7
//!   profile:jake list:all`); [`EdgeStore::purge_tags`] drops (or, softly, expires) every entry
//!   carrying one of the given keys, so a write purges every page that shows what it changed.
//!
//! A purge must not be undone by a fill that was already on its way: a response the origin
//! produced before a write, stored after the write's purge, would be stale until it expires.
//! So the store remembers when each tag was last purged (for [`PURGE_MEMORY`]), and refuses a
//! fill whose response arrived before a purge of one of its tags.

use std::{
    any::Any,
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use lru::LruCache;
use parking_lot::Mutex;
use pingora::{
    cache::{
        key::{CacheHashKey, HashBinary},
        storage::{
            HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome,
            PurgeTarget, PurgeType,
        },
        trace::SpanHandle,
        CacheKey, CacheMeta, Storage,
    },
    http::ResponseHeader,
    Error, ErrorType, Result,
};

use crate::settings::StoreSettings;

/// The response header that names what a response shows, space-separated (Fastly's and
/// Varnish's convention). The edge keeps it for purging and does not pass it to clients.
pub const SURROGATE_KEY: &str = "surrogate-key";

/// The most surrogate keys one response may carry. A page of 20 articles names 20 articles,
/// their authors and its list: about 45. A response with more is not stored, since dropping
/// some keys would let a purge miss it.
pub const MAX_TAGS: usize = 512;

/// How long the store remembers that a tag was purged, to refuse fills that started before the
/// purge. Above the longest an origin fetch may take (the edge's 12 s read timeout).
pub const PURGE_MEMORY: Duration = Duration::from_secs(30);

/// What an entry costs beyond its body and header bytes (the entry, its key, list links).
const ENTRY_OVERHEAD: usize = 256;

/// How an entry ages: pingora's freshness fields, kept apart from the header so a revalidation
/// or a soft purge replaces a few numbers.
#[derive(Debug, Clone, Copy)]
struct Freshness {
    fresh_until: SystemTime,
    /// When the response was stored or last revalidated (the `Age` header counts from here).
    updated: SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
}

impl Freshness {
    fn of(meta: &CacheMeta) -> Self {
        Self {
            fresh_until: meta.fresh_until(),
            updated: meta.updated(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
        }
    }
}

/// One stored response.
struct Entry {
    header: ResponseHeader,
    freshness: Freshness,
    body: Bytes,
    tags: Box<[String]>,
    /// What it counts against the cap.
    size: usize,
}

impl Entry {
    fn meta(&self) -> CacheMeta {
        let f = self.freshness;
        CacheMeta::new(
            f.fresh_until,
            f.updated,
            f.stale_while_revalidate_sec,
            f.stale_if_error_sec,
            self.header.clone(),
        )
    }
}

fn header_bytes(header: &ResponseHeader) -> usize {
    header
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

/// The tags a response names, or `None` when it names more than [`MAX_TAGS`].
pub fn tags_of(header: &ResponseHeader) -> Option<Box<[String]>> {
    let mut tags: Vec<String> = Vec::new();
    for value in header.headers.get_all(SURROGATE_KEY) {
        let Ok(value) = value.to_str() else { continue };
        tags.extend(value.split_ascii_whitespace().map(str::to_owned));
    }
    tags.sort_unstable();
    tags.dedup();
    (tags.len() <= MAX_TAGS).then(|| tags.into_boxed_slice())
}

struct Shard {
    entries: LruCache<HashBinary, Arc<Entry>>,
    bytes: usize,
}

/// Which entries carry each tag, and when tags were last purged.
#[derive(Default)]
struct TagIndex {
    keys: HashMap<String, HashSet<HashBinary>>,
    purged_at: HashMap<String, SystemTime>,
}

impl TagIndex {
    fn add(&mut self, key: HashBinary, tags: &[String]) {
        for tag in tags {
            self.keys.entry(tag.clone()).or_default().insert(key);
        }
    }

    fn remove(&mut self, key: &HashBinary, tags: &[String]) {
        for tag in tags {
            if let Some(keys) = self.keys.get_mut(tag) {
                keys.remove(key);
                if keys.is_empty() {
                    self.keys.remove(tag);
                }
            }
        }
    }

    /// Whether a response that arrived at `arrived` shows something purged since.
    fn purged_since(&self, tags: &[String], arrived: SystemTime) -> bool {
        tags.iter()
            .any(|t| self.purged_at.get(t).is_some_and(|at| *at >= arrived))
    }
}

/// How a purge treats the entries it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// Remove the entries: the next request fetches, and waits for it.
    Hard,
    /// Mark them stale and stop serving them while they revalidate: the next request
    /// revalidates, and waits for it; `stale-if-error` still covers an origin outage.
    Soft,
    /// Mark them stale but keep `stale-while-revalidate`: the next request is answered with the
    /// old copy at once while one background request refreshes it. For answers that change
    /// often and where a reader may see the previous version for one refresh (lists: every new
    /// article changes every list page).
    Refresh,
}

/// The edge's shared cache. `'static`: pingora holds storage by static reference, so the
/// server leaks one at start-up ([`EdgeStore::leak`]).
pub struct EdgeStore {
    shards: Box<[Mutex<Shard>]>,
    tags: Mutex<TagIndex>,
    shard_max_bytes: usize,
    max_object_bytes: usize,
    bytes: AtomicUsize,
    objects: AtomicUsize,
    evictions: AtomicU64,
    /// Fills refused because a purge of one of their tags came after their response.
    refused_fills: AtomicU64,
}

impl EdgeStore {
    /// An empty store with the given bounds.
    pub fn new(settings: &StoreSettings) -> Self {
        let shards = settings.shards.max(1);
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: LruCache::unbounded(),
                        bytes: 0,
                    })
                })
                .collect(),
            tags: Mutex::default(),
            shard_max_bytes: settings.max_bytes / shards,
            max_object_bytes: settings.max_object_bytes,
            bytes: AtomicUsize::new(0),
            objects: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            refused_fills: AtomicU64::new(0),
        }
    }

    /// A store that lives as long as the process, as pingora needs.
    pub fn leak(settings: &StoreSettings) -> &'static Self {
        Box::leak(Box::new(Self::new(settings)))
    }

    fn shard(&self, key: &HashBinary) -> &Mutex<Shard> {
        &self.shards[key[0] as usize % self.shards.len()]
    }

    /// Bytes counted against the cap now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Responses stored now.
    pub fn objects(&self) -> usize {
        self.objects.load(Ordering::Relaxed)
    }

    /// Entries pushed out by the byte cap so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Fills refused because their response predates a purge of what they show.
    pub fn refused_fills(&self) -> u64 {
        self.refused_fills.load(Ordering::Relaxed)
    }

    /// Stores a complete response (the miss handler's last step). `false` when it is not kept:
    /// too large, too many tags, or overtaken by a purge.
    fn insert(
        &self,
        key: HashBinary,
        header: ResponseHeader,
        freshness: Freshness,
        body: Bytes,
    ) -> bool {
        let Some(tags) = tags_of(&header) else {
            return false;
        };
        let size = body.len() + header_bytes(&header) + ENTRY_OVERHEAD;
        if body.len() > self.max_object_bytes || size > self.shard_max_bytes {
            return false;
        }
        // Lock order, everywhere: the tag index, then a shard.
        let mut index = self.tags.lock();
        if index.purged_since(&tags, freshness.updated) {
            self.refused_fills.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut shard = self.shard(&key).lock();
        if let Some(old) = shard.entries.pop(&key) {
            self.forget(&mut shard, &old);
            index.remove(&key, &old.tags);
        }
        index.add(key, &tags);
        shard.entries.put(
            key,
            Arc::new(Entry {
                header,
                freshness,
                body,
                tags,
                size,
            }),
        );
        shard.bytes += size;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.objects.fetch_add(1, Ordering::Relaxed);
        while shard.bytes > self.shard_max_bytes {
            let Some((evicted_key, evicted)) = shard.entries.pop_lru() else {
                break;
            };
            self.forget(&mut shard, &evicted);
            index.remove(&evicted_key, &evicted.tags);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Takes an entry's bytes off the counts (it has left its shard).
    fn forget(&self, shard: &mut Shard, entry: &Entry) {
        shard.bytes -= entry.size;
        self.bytes.fetch_sub(entry.size, Ordering::Relaxed);
        self.objects.fetch_sub(1, Ordering::Relaxed);
    }

    fn remove(&self, key: &HashBinary) -> bool {
        let mut index = self.tags.lock();
        let mut shard = self.shard(key).lock();
        let Some(entry) = shard.entries.pop(key) else {
            return false;
        };
        self.forget(&mut shard, &entry);
        index.remove(key, &entry.tags);
        true
    }

    /// Replaces an entry's freshness (and header) in place, keeping its body.
    fn refresh(
        &self,
        key: &HashBinary,
        update: impl FnOnce(&Entry) -> (ResponseHeader, Freshness),
    ) -> bool {
        let mut shard = self.shard(key).lock();
        let Some(entry) = shard.entries.peek_mut(key) else {
            return false;
        };
        let (header, freshness) = update(entry);
        *entry = Arc::new(Entry {
            header,
            freshness,
            body: entry.body.clone(),
            tags: entry.tags.clone(),
            size: entry.size,
        });
        true
    }

    /// Purges every entry that carries one of `tags`; returns how many. Remembers the purge so
    /// that fills already under way for these tags are refused ([`PURGE_MEMORY`]).
    pub fn purge_tags(&self, tags: &[&str], mode: PurgeMode) -> usize {
        let now = SystemTime::now();
        let keys: HashSet<HashBinary> = {
            let mut index = self.tags.lock();
            index
                .purged_at
                .retain(|_, at| now.duration_since(*at).unwrap_or_default() < PURGE_MEMORY);
            for tag in tags {
                index.purged_at.insert((*tag).to_owned(), now);
            }
            tags.iter()
                .filter_map(|t| index.keys.get(*t))
                .flatten()
                .copied()
                .collect()
        };
        keys.iter()
            .filter(|key| match mode {
                PurgeMode::Hard => self.remove(key),
                PurgeMode::Soft | PurgeMode::Refresh => self.refresh(key, |entry| {
                    let mut f = entry.freshness;
                    f.fresh_until = f.fresh_until.min(now);
                    if mode == PurgeMode::Soft {
                        f.stale_while_revalidate_sec = 0;
                    }
                    (entry.header.clone(), f)
                }),
            })
            .count()
    }
}

/// A hit: the stored body, or a range of it (pingora serves `Range` requests by seeking).
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start {start} beyond body of {}", self.body.len()),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A fill in progress: the body is gathered here and stored whole when it ends. Requests for
/// the same key meanwhile wait on pingora's cache lock, then find the stored entry.
struct Fill {
    store: &'static EdgeStore,
    key: HashBinary,
    header: ResponseHeader,
    freshness: Freshness,
    body: BytesMut,
    too_large: bool,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.too_large || self.body.len() + data.len() > self.store.max_object_bytes {
            self.too_large = true;
            self.body = BytesMut::new();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.too_large {
            return Ok(MissFinishType::Created(0));
        }
        let size = self.body.len();
        let body = self.body.freeze();
        let kept = self
            .store
            .insert(self.key, self.header, self.freshness, body);
        Ok(MissFinishType::Created(if kept { size } else { 0 }))
    }
}

#[async_trait]
impl Storage for EdgeStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        let entry = self.shard(&hash).lock().entries.get(&hash).cloned();
        Ok(entry.map(|entry| {
            let hit = Hit {
                body: entry.body.clone(),
                start: 0,
                end: entry.body.len(),
                done: false,
            };
            (entry.meta(), Box::new(hit) as HitHandler)
        }))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Fill {
            store: self,
            key: key.combined_bin(),
            header: meta.response_header().clone(),
            freshness: Freshness::of(meta),
            body: BytesMut::new(),
            too_large: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(if self.remove(&target.key().combined_bin()) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let hash = key.combined_bin();
        Ok(self.refresh(&hash, |_| {
            (meta.response_header().clone(), Freshness::of(meta))
        }))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_bytes: usize, max_object_bytes: usize) -> StoreSettings {
        StoreSettings {
            max_bytes,
            max_object_bytes,
            shards: 1,
        }
    }

    fn header(tags: &str) -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).unwrap_or_else(|e| panic!("{e}"));
        h.insert_header("cache-control", "public, max-age=60")
            .unwrap_or_else(|e| panic!("{e}"));
        if !tags.is_empty() {
            h.insert_header(SURROGATE_KEY, tags.to_owned())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        h
    }

    fn fresh(secs: u64) -> Freshness {
        let now = SystemTime::now();
        Freshness {
            fresh_until: now + Duration::from_secs(secs),
            updated: now,
            stale_while_revalidate_sec: 30,
            stale_if_error_sec: 300,
        }
    }

    fn key(n: u8) -> HashBinary {
        let mut k = [0u8; 16];
        k[15] = n;
        k
    }

    fn put(store: &EdgeStore, n: u8, tags: &str, body_len: usize) -> bool {
        store.insert(
            key(n),
            header(tags),
            fresh(60),
            Bytes::from(vec![b'x'; body_len]),
        )
    }

    fn has(store: &EdgeStore, n: u8) -> bool {
        store.shard(&key(n)).lock().entries.contains(&key(n))
    }

    #[test]
    fn the_byte_cap_holds_and_the_least_recently_used_go_first() {
        let store = EdgeStore::new(&settings(10_000, 5_000));
        for n in 0..5 {
            assert!(put(&store, n, "", 1_500));
        }
        // touch 0, so 1 is now the least recently used
        assert!(store.shard(&key(0)).lock().entries.get(&key(0)).is_some());
        assert!(put(&store, 5, "", 1_500));
        assert!(store.bytes() <= 10_000, "{} bytes", store.bytes());
        assert!(has(&store, 0), "recently read, kept");
        assert!(!has(&store, 1), "least recently used, evicted");
        assert!(store.evictions() >= 1);
        assert_eq!(store.objects(), store.shard(&key(0)).lock().entries.len());
    }

    #[test]
    fn an_object_above_the_largest_size_is_not_stored() {
        let store = EdgeStore::new(&settings(1_000_000, 2_000));
        assert!(!put(&store, 1, "", 2_001));
        assert!(put(&store, 2, "", 2_000));
        assert_eq!(store.objects(), 1);
    }

    #[test]
    fn a_hard_purge_by_tag_drops_every_entry_naming_it_and_nothing_else() {
        let store = EdgeStore::new(&settings(1_000_000, 100_000));
        put(&store, 1, "article:1 profile:jake list:all", 10);
        put(&store, 2, "article:2 profile:jane list:all", 10);
        put(&store, 3, "article:1 profile:jake", 10);
        assert_eq!(store.purge_tags(&["profile:jake"], PurgeMode::Hard), 2);
        assert!(!has(&store, 1) && !has(&store, 3) && has(&store, 2));
        assert_eq!(store.purge_tags(&["profile:jake"], PurgeMode::Hard), 0);
        assert_eq!(
            store.purge_tags(&["list:all", "nothing"], PurgeMode::Hard),
            1
        );
        assert_eq!((store.objects(), store.bytes()), (0, 0));
        assert!(
            store.tags.lock().keys.is_empty(),
            "the index forgets removed entries"
        );
    }

    #[test]
    fn a_soft_purge_keeps_the_entry_for_errors_but_not_for_revalidating_in_the_background() {
        let store = EdgeStore::new(&settings(1_000_000, 100_000));
        put(&store, 1, "article:1", 10);
        assert_eq!(store.purge_tags(&["article:1"], PurgeMode::Soft), 1);
        let entry = store.shard(&key(1)).lock().entries.get(&key(1)).cloned();
        let meta = entry.map(|e| e.meta()).unwrap_or_else(|| panic!("kept"));
        let now = SystemTime::now();
        assert!(!meta.is_fresh(now));
        assert!(!meta.serve_stale_while_revalidate(now));
        assert!(meta.serve_stale_if_error(now));
    }

    #[test]
    fn a_refresh_purge_keeps_the_copy_servable_while_it_is_refreshed() {
        let store = EdgeStore::new(&settings(1_000_000, 100_000));
        put(&store, 1, "list:all", 10);
        assert_eq!(store.purge_tags(&["list:all"], PurgeMode::Refresh), 1);
        let entry = store.shard(&key(1)).lock().entries.get(&key(1)).cloned();
        let meta = entry.map(|e| e.meta()).unwrap_or_else(|| panic!("kept"));
        let now = SystemTime::now();
        assert!(!meta.is_fresh(now));
        assert!(meta.serve_stale_while_revalidate(now));
    }

    #[test]
    fn a_fill_that_started_before_a_purge_of_its_tags_is_refused() {
        let store = EdgeStore::new(&settings(1_000_000, 100_000));
        let arrived_before = fresh(60);
        store.purge_tags(&["article:1"], PurgeMode::Hard);
        let late = store.insert(
            key(1),
            header("article:1 list:all"),
            arrived_before,
            Bytes::from_static(b"old"),
        );
        assert!(!late, "the response predates the purge");
        assert_eq!(store.refused_fills(), 1);
        // a response that arrives after the purge is stored
        let mut after = fresh(60);
        after.updated = SystemTime::now() + Duration::from_millis(1);
        let stored = store.insert(
            key(1),
            header("article:1"),
            after,
            Bytes::from_static(b"new"),
        );
        assert!(stored);
    }

    #[test]
    fn too_many_tags_means_not_stored() {
        let many: Vec<String> = (0..=MAX_TAGS).map(|n| format!("article:{n}")).collect();
        let store = EdgeStore::new(&settings(10_000_000, 100_000));
        assert!(!put(&store, 1, &many.join(" "), 10));
        assert!(put(&store, 2, &many[..MAX_TAGS].join(" "), 10));
    }
}
