//! The cache key: one stored response for every request that means the same thing.
//!
//! Two requests that differ only in the case of the host name, the order of query parameters or
//! a marketing tag (`utm_source=...`) get the same answer from the origin, so they share one key;
//! otherwise every campaign link would be a miss and a separate copy. The edge also sends the
//! normalised target to the origin, so what is stored is exactly what the key names.
//!
//! Not normalised: percent-encoding (`%41` vs `A`) and repeated parameters, which the app treats
//! as different requests anyway. A real CDN makes this configurable per customer.

/// Query parameters that only tell analytics where a click came from: dropped from the key and
/// from the request to the origin (the app never reads them).
pub const TRACKING_PARAMETERS: &[&str] = &["gclid", "fbclid", "msclkid", "mc_cid", "mc_eid", "_ga"];

/// Parameters starting with this are tracking parameters too (`utm_source`, `utm_medium`, ...).
const TRACKING_PREFIX: &str = "utm_";

fn is_tracking(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with(TRACKING_PREFIX) || TRACKING_PARAMETERS.contains(&lower.as_str())
}

/// The path and query the edge sends to the origin: the path as given, then the query's
/// parameters sorted by name (stable, so repeated names keep their order) without tracking
/// parameters; no `?` when nothing is left.
pub fn normalised_target(path: &str, query: Option<&str>) -> String {
    let mut params: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| !is_tracking(p.split('=').next().unwrap_or("")))
        .collect();
    params.sort_by_key(|p| p.split('=').next().unwrap_or(""));
    if params.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", params.join("&"))
    }
}

/// The primary cache key: the host in lower case, then the normalised target. Length-prefixed
/// so no host and target can run into each other.
pub fn primary_key(host: &str, target: &str) -> String {
    let host = host.to_ascii_lowercase();
    format!("{}:{host}{target}", host.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_order_and_tracking_parameters_do_not_make_a_new_key() {
        let a = normalised_target("/api/articles", Some("limit=20&offset=0&tag=rust"));
        let b = normalised_target(
            "/api/articles",
            Some("tag=rust&utm_source=newsletter&offset=0&UTM_Medium=mail&limit=20&gclid=x"),
        );
        assert_eq!(a, b);
        assert_eq!(a, "/api/articles?limit=20&offset=0&tag=rust");
    }

    #[test]
    fn a_query_of_only_tracking_parameters_is_no_query() {
        assert_eq!(
            normalised_target("/api/tags", Some("fbclid=1&")),
            "/api/tags"
        );
        assert_eq!(normalised_target("/api/tags", None), "/api/tags");
    }

    #[test]
    fn what_changes_the_answer_still_changes_the_key() {
        let rust = normalised_target("/api/articles", Some("tag=rust"));
        let go = normalised_target("/api/articles", Some("tag=go"));
        assert_ne!(rust, go);
        // repeated names keep their order: the app would read them in order
        assert_eq!(
            normalised_target("/a", Some("b=2&a=1&b=1")),
            "/a?a=1&b=2&b=1"
        );
    }

    use proptest::prelude::*;

    /// A parameter the app reads: a name that is not a tracking one, and a value.
    fn parameter() -> impl Strategy<Value = (String, String)> {
        ("[a-z][a-z_]{0,7}", "[a-zA-Z0-9%._-]{0,6}")
            .prop_filter("not tracking", |(n, _)| !is_tracking(n))
    }

    /// A tracking parameter: any `utm_` name or a listed one, each letter in either case, with
    /// any value (`=` inside it included) or none.
    fn tracking() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                "utm_[a-z_]{0,8}",
                prop::sample::select(TRACKING_PARAMETERS).prop_map(String::from)
            ],
            prop::collection::vec(any::<bool>(), 16),
            proptest::option::of("[^&#]{0,8}"),
        )
            .prop_map(|(name, flips, value)| {
                let name: String = name
                    .chars()
                    .zip(flips)
                    .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                    .collect();
                match value {
                    Some(value) => format!("{name}={value}"),
                    None => name,
                }
            })
    }

    fn query(params: &[(String, String)]) -> String {
        params
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Any query a client can send: well-formed parameters, or any text at all (empty
    /// parameters, names without values, `=` and `?` anywhere, percent-escapes, non-ASCII).
    fn any_query() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(parameter(), 0..6).prop_map(|params| query(&params)),
            "[a-zA-Z_=&?%0-9.-]{0,30}",
            "\\PC{0,30}",
        ]
    }

    proptest! {
        /// What the edge sends to the origin is its own normal form, so the origin's answer is
        /// stored under the key that names exactly what was asked for.
        #[test]
        fn normalising_twice_changes_nothing(query in any_query()) {
            let once = normalised_target("/api/articles", Some(&query));
            let (path, rest) = once.split_once('?').unwrap_or((once.as_str(), ""));
            prop_assert_eq!(normalised_target(path, Some(rest)), once.clone());
        }

        /// Any order of the same distinct parameters is one key: a link that lists them
        /// differently is still a hit.
        #[test]
        fn the_order_of_distinct_parameters_does_not_change_the_key(
            (params, shuffled) in prop::collection::btree_map("[a-z]{1,6}", "[a-z0-9]{0,4}", 0..6)
                .prop_map(|params| {
                    params.into_iter().filter(|(n, _)| !is_tracking(n)).collect::<Vec<_>>()
                })
                .prop_flat_map(|params| (Just(params.clone()), Just(params).prop_shuffle())),
        ) {
            prop_assert_eq!(
                normalised_target("/api/articles", Some(&query(&params))),
                normalised_target("/api/articles", Some(&query(&shuffled)))
            );
        }

        /// Tracking parameters, wherever they stand, are dropped: a campaign link is a hit.
        #[test]
        fn tracking_parameters_anywhere_never_change_the_key(
            params in prop::collection::vec(parameter(), 0..5),
            tags in prop::collection::vec((tracking(), any::<prop::sample::Index>()), 1..4),
        ) {
            let mut with: Vec<String> = params.iter().map(|(n, v)| format!("{n}={v}")).collect();
            for (tag, at) in tags {
                let at = at.index(with.len() + 1);
                with.insert(at, tag);
            }
            prop_assert_eq!(
                normalised_target("/api/tags", Some(&query(&params))),
                normalised_target("/api/tags", Some(&with.join("&")))
            );
        }

        /// And nothing else is dropped: a parameter the app reads makes another key.
        #[test]
        fn a_parameter_the_app_reads_always_changes_the_key(
            params in prop::collection::vec(parameter(), 0..5),
            extra in parameter(),
        ) {
            let mut more = params.clone();
            more.push(extra);
            prop_assert_ne!(
                normalised_target("/api/articles", Some(&query(&params))),
                normalised_target("/api/articles", Some(&query(&more)))
            );
        }

        /// Whatever the client writes, the host's case never changes the key; a host that
        /// differs in anything but case, or a different target, always does: one key is one
        /// answer (hosts may hold digits and `:`, which the length prefix keeps apart from the
        /// target).
        #[test]
        fn two_requests_share_a_key_only_when_their_hosts_differ_in_case_alone(
            host in "[a-zA-Z0-9.:-]{0,12}|\\PC{0,12}",
            other_host in "[a-zA-Z0-9.:-]{0,12}",
            target in "/\\PC{0,16}",
            other_target in "/\\PC{0,16}",
            flips in prop::collection::vec(any::<bool>(), 12),
        ) {
            let recased: String = host
                .chars()
                .zip(flips.iter().cycle())
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect();
            prop_assert_eq!(primary_key(&host, &target), primary_key(&recased, &target));
            let same_request = host.eq_ignore_ascii_case(&other_host) && target == other_target;
            prop_assert_eq!(
                primary_key(&host, &target) == primary_key(&other_host, &other_target),
                same_request
            );
        }

        /// The path is never normalised or mixed with the query: different paths give different
        /// targets, whatever their queries (a path from a request line holds no `?`).
        #[test]
        fn different_paths_never_share_a_target(
            path in "/[^?]{0,16}",
            other_path in "/[^?]{0,16}",
            query in proptest::option::of(any_query()),
            other_query in proptest::option::of(any_query()),
        ) {
            prop_assume!(path != other_path);
            prop_assert_ne!(
                normalised_target(&path, query.as_deref()),
                normalised_target(&other_path, other_query.as_deref())
            );
        }
    }

    #[test]
    fn host_case_does_not_matter_and_hosts_cannot_collide_with_paths() {
        assert_eq!(
            primary_key("EDGE.example", "/x"),
            primary_key("edge.example", "/x")
        );
        assert_ne!(primary_key("a", "b/x"), primary_key("ab", "/x"));
    }
}
