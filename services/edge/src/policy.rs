//! What the edge may share between clients: the one place that decides.
//!
//! A shared cache that stores the wrong response serves one user's data to another, so the rules
//! are strict and all here, in the order RFC 9111 gives them, narrowed to what this app needs:
//!
//! | rule (RFC 9111)                                   | here                                          |
//! |---------------------------------------------------|-----------------------------------------------|
//! | only methods whose responses are cacheable (§2)   | GET and HEAD; everything else passes          |
//! | a request with `Authorization` is not shared unless the response says `public` / `s-maxage` (§3.5) | stricter: a request with `Authorization` or `Cookie` always passes, since a logged-in reader's articles carry `favorited` and `following` |
//! | `no-store` (§5.2.2.5), `private` (§5.2.2.7)         | never stored                                  |
//! | `no-cache` (§5.2.2.4)                              | passes (storing it would only add a revalidation per hit) |
//! | explicit freshness: `s-maxage`, `max-age`, `Expires` (§4.2.1) | required, and `public` too: the app opts in route by route; no heuristic freshness |
//! | `Vary` (§4.1)                                      | only `Accept-Encoding`, which the edge negotiates itself (the origin always gets `identity`); any other field, or `*`, passes |
//! | `Set-Cookie` (not in RFC 9111; every CDN's default) | never stored: a cookie is addressed to one client |
//! | stale responses (§4.2.4, RFC 5861)                 | only within the origin's `stale-while-revalidate` / `stale-if-error` windows |
//!
//! Anything that passes is remembered as uncacheable for a while (pingora's predictor), so the
//! next request for it goes straight to the origin without waiting on the cache lock
//! (hit-for-miss).

use pingora::cache::cache_control::CacheControl;
use pingora::{
    cache::{filters::resp_cacheable, CacheMetaDefaults, NoCacheReason, RespCacheable},
    http::{RequestHeader, ResponseHeader},
};

/// `Vary` fields the edge honours. Only the content coding, which the edge decides for each
/// client itself (see [`crate::proxy`]): a response stored once serves every client.
pub const ALLOWED_VARY: &[&str] = &["accept-encoding"];

/// No freshness without the origin's word: a response without `max-age`, `s-maxage` or
/// `Expires` is not stored, and no stale windows beyond what it says.
const NO_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// Why a request is not answered from the shared cache (the `reason` label of the pass count).
pub type PassReason = &'static str;

/// Whether a request may be answered from, and fill, the shared cache.
pub fn request_shareable(req: &RequestHeader) -> Result<(), PassReason> {
    if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        return Err("method");
    }
    if req.headers.contains_key(http::header::AUTHORIZATION) {
        return Err("authorization");
    }
    if req.headers.contains_key(http::header::COOKIE) {
        return Err("cookie");
    }
    Ok(())
}

/// Whether the origin's response may be stored and shared, and for how long (the returned
/// metadata carries freshness and the stale windows). The stored header loses the `Vary:
/// Accept-Encoding` the edge makes true by itself.
pub fn response_shareable(resp: &ResponseHeader) -> RespCacheable {
    match shareable_header(resp) {
        Err(reason) => RespCacheable::Uncacheable(NoCacheReason::Custom(reason)),
        Ok(cc) => {
            let mut stored = resp.clone();
            stored.remove_header(&http::header::VARY);
            resp_cacheable(Some(&cc), stored, false, &NO_DEFAULTS)
        }
    }
}

fn shareable_header(resp: &ResponseHeader) -> Result<CacheControl, PassReason> {
    if resp.status != http::StatusCode::OK {
        return Err("status");
    }
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return Err("set-cookie");
    }
    for value in resp.headers.get_all(http::header::VARY) {
        let value = value.to_str().map_err(|_| "vary")?;
        for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            if field == "*" {
                return Err("vary *");
            }
            if !ALLOWED_VARY.iter().any(|a| a.eq_ignore_ascii_case(field)) {
                return Err("vary");
            }
        }
    }
    let cc = CacheControl::from_resp_headers(resp).ok_or("no cache-control")?;
    if cc.no_store() {
        return Err("no-store");
    }
    if cc.private() {
        return Err("private");
    }
    if cc.no_cache() {
        return Err("no-cache");
    }
    if !cc.public() {
        return Err("not public");
    }
    Ok(cc)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn request(method: &str, headers: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut req =
            RequestHeader::build(method, b"/api/articles", None).unwrap_or_else(|e| panic!("{e}"));
        for (k, v) in headers {
            req.insert_header(*k, *v).unwrap_or_else(|e| panic!("{e}"));
        }
        req
    }

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).unwrap_or_else(|e| panic!("{e}"));
        for (k, v) in headers {
            resp.append_header(*k, *v).unwrap_or_else(|e| panic!("{e}"));
        }
        resp
    }

    fn reason(resp: &ResponseHeader) -> Option<&'static str> {
        match response_shareable(resp) {
            RespCacheable::Cacheable(_) => None,
            RespCacheable::Uncacheable(NoCacheReason::Custom(r)) => Some(r),
            RespCacheable::Uncacheable(other) => Some(other.as_str()),
        }
    }

    #[test]
    fn only_anonymous_reads_are_shared() {
        assert_eq!(request_shareable(&request("GET", &[])), Ok(()));
        assert_eq!(request_shareable(&request("HEAD", &[])), Ok(()));
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            assert_eq!(request_shareable(&request(method, &[])), Err("method"));
        }
        let logged_in = request("GET", &[("authorization", "Token abc")]);
        assert_eq!(request_shareable(&logged_in), Err("authorization"));
        let cookie = request("GET", &[("cookie", "session=1")]);
        assert_eq!(request_shareable(&cookie), Err("cookie"));
    }

    #[test]
    fn a_public_response_with_a_lifetime_is_stored_with_its_stale_windows() {
        let resp = response(
            200,
            &[(
                "cache-control",
                "public, max-age=5, stale-while-revalidate=30, stale-if-error=300",
            )],
        );
        let RespCacheable::Cacheable(meta) = response_shareable(&resp) else {
            panic!("should be cacheable");
        };
        assert!(meta.is_fresh(SystemTime::now()));
        assert_eq!(meta.stale_while_revalidate_sec(), 30);
        assert_eq!(meta.stale_if_error_sec(), 300);
    }

    #[test]
    fn anything_addressed_to_one_client_or_unmarked_is_never_stored() {
        type Case = (u16, &'static [(&'static str, &'static str)], &'static str);
        let cases: &[Case] = &[
            (200, &[], "no cache-control"),
            (200, &[("cache-control", "max-age=60")], "not public"),
            (
                200,
                &[("cache-control", "public, max-age=60, private")],
                "private",
            ),
            (
                200,
                &[("cache-control", "public, no-store, max-age=60")],
                "no-store",
            ),
            (
                200,
                &[("cache-control", "public, no-cache, max-age=60")],
                "no-cache",
            ),
            (
                200,
                &[
                    ("cache-control", "public, max-age=60"),
                    ("set-cookie", "a=b"),
                ],
                "set-cookie",
            ),
            (404, &[("cache-control", "public, max-age=60")], "status"),
            (
                200,
                &[("cache-control", "public, max-age=60"), ("vary", "*")],
                "vary *",
            ),
            (
                200,
                &[
                    ("cache-control", "public, max-age=60"),
                    ("vary", "Accept-Encoding, Authorization"),
                ],
                "vary",
            ),
            (200, &[("cache-control", "public")], "origin not cacheable"),
        ];
        for (status, headers, want) in cases {
            let got = reason(&response(*status, headers));
            assert!(got.is_some(), "{headers:?} must not be stored");
            if *want != "origin not cacheable" {
                assert_eq!(got, Some(*want), "{headers:?}");
            }
        }
    }

    #[test]
    fn vary_on_the_content_coding_alone_is_honoured_by_the_edge_and_dropped_from_the_copy() {
        let resp = response(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("vary", "accept-encoding"),
            ],
        );
        let RespCacheable::Cacheable(meta) = response_shareable(&resp) else {
            panic!("should be cacheable");
        };
        assert!(meta.headers().get("vary").is_none());
    }
}
