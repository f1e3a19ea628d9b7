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

    /// A tracking parameter, in any case.
    fn tracking() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                Just("utm_source".to_owned()),
                Just("UTM_Medium".to_owned()),
                Just("utm_x".to_owned()),
                Just("GCLID".to_owned()),
                Just("fbclid".to_owned()),
                Just("_ga".to_owned()),
            ],
            "[a-z0-9]{0,6}",
        )
            .prop_map(|(n, v)| format!("{n}={v}"))
    }

    fn query(params: &[(String, String)]) -> String {
        params
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    proptest! {
        #[test]
        fn normalising_twice_changes_nothing(params in prop::collection::vec(parameter(), 0..6)) {
            let once = normalised_target("/api/articles", Some(&query(&params)));
            let (path, rest) = once.split_once('?').unwrap_or((once.as_str(), ""));
            prop_assert_eq!(normalised_target(path, Some(rest)), once.clone());
        }

        #[test]
        fn the_order_of_distinct_parameters_does_not_change_the_key(
            params in prop::collection::btree_map("[a-z]{1,6}", "[a-z0-9]{0,4}", 0..6),
            seed in any::<u64>(),
        ) {
            let params: Vec<(String, String)> = params
                .into_iter()
                .filter(|(n, _)| !is_tracking(n))
                .collect();
            let mut shuffled = params.clone();
            // A deterministic shuffle from the seed: rotate, then reverse on odd seeds.
            if !shuffled.is_empty() {
                let by = usize::try_from(seed % 64).unwrap_or(0) % shuffled.len();
                shuffled.rotate_left(by);
            }
            if seed % 2 == 1 {
                shuffled.reverse();
            }
            prop_assert_eq!(
                normalised_target("/api/articles", Some(&query(&params))),
                normalised_target("/api/articles", Some(&query(&shuffled)))
            );
        }

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

        #[test]
        fn different_hosts_or_targets_never_share_a_key(
            a in ("[a-z0-9.:-]{1,12}", "/[a-z/?=&]{0,12}"),
            b in ("[a-z0-9.:-]{1,12}", "/[a-z/?=&]{0,12}"),
        ) {
            prop_assume!(a != b);
            prop_assert_ne!(primary_key(&a.0, &a.1), primary_key(&b.0, &b.1));
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
