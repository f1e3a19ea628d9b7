//! Article slugs: `how-to-train-your-dragon-1x2b9c`, the title made URL-safe plus the article's id
//! in base 36.
//!
//! Ending every slug with the id means two articles with the same title get distinct slugs without
//! a uniqueness retry loop, and a slug alone says which row (and, from stage 7, which shard) holds
//! the article: the lookup is by primary key, and the title part is only checked for equality.

/// Longest title part kept in a slug; URLs stay readable and bounded whatever the title length.
const MAX_TITLE_PART: usize = 80;

/// The slug of an article with this title and id.
pub fn slug_for(title: &str, id: i64) -> String {
    let mut slug = String::with_capacity(title.len().min(MAX_TITLE_PART) + 12);
    let mut pending_dash = false;
    for c in title.chars() {
        if !c.is_ascii_alphanumeric() {
            pending_dash = true;
            continue;
        }
        let dash = pending_dash && !slug.is_empty();
        // Cut before a word's dash as well as before a letter: a title cut right after a dash
        // once made `...-word--1x` (found by the property test below).
        if slug.len() + usize::from(dash) >= MAX_TITLE_PART {
            break;
        }
        if dash {
            slug.push('-');
        }
        pending_dash = false;
        slug.push(c.to_ascii_lowercase());
    }
    if !slug.is_empty() {
        slug.push('-');
    }
    slug.push_str(&to_base36(id));
    slug
}

/// The article id a slug ends with, if it ends with one.
pub fn id_from_slug(slug: &str) -> Option<i64> {
    let suffix = slug.rsplit('-').next()?;
    from_base36(suffix)
}

fn to_base36(id: i64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = id.unsigned_abs();
    let mut out = Vec::with_capacity(13);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    out.into_iter().map(char::from).collect()
}

fn from_base36(s: &str) -> Option<i64> {
    // 13 base-36 digits hold any i64; longer input is not one of our slugs, and neither is a
    // leading zero (`to_base36` writes none): one article, one slug per title.
    if s.is_empty()
        || s.len() > 13
        || s.starts_with('0')
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        return None;
    }
    i64::from_str_radix(s, 36).ok().filter(|id| *id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_readable_and_end_in_the_id() {
        assert_eq!(
            slug_for("How to train your dragon", 1_234_567),
            "how-to-train-your-dragon-qglj"
        );
        assert_eq!(slug_for("  Hello,   World!! ", 35), "hello-world-z");
        assert_eq!(slug_for("日本語", 36), "10");
    }

    #[test]
    fn the_id_comes_back_out_of_the_slug() {
        for id in [1, 35, 36, 1_234_567, (1 << 53) - 1] {
            assert_eq!(id_from_slug(&slug_for("Some title", id)), Some(id));
        }
        assert_eq!(id_from_slug("no-id-here-"), None);
        assert_eq!(id_from_slug("UPPER-1A"), None);
        assert_eq!(id_from_slug("../../etc/passwd"), None);
        assert_eq!(id_from_slug("x-zzzzzzzzzzzzzzzzzz"), None);
        assert_eq!(
            id_from_slug("title-0a"),
            None,
            "a leading zero is not our spelling"
        );
    }

    /// The longest slug: the title part, a dash, and an id of 13 base-36 digits.
    const MAX_SLUG: usize = MAX_TITLE_PART + 1 + 13;

    proptest::proptest! {
        /// Any title, any id: the slug is made of `a-z`, `0-9` and single dashes inside, is
        /// bounded, and gives its id back.
        #[test]
        fn any_title_and_id_make_a_bounded_url_safe_slug_that_gives_its_id_back(
            title in "\\PC{0,300}",
            id in 1..=i64::MAX,
        ) {
            let slug = slug_for(&title, id);
            proptest::prop_assert!(slug.len() <= MAX_SLUG, "{slug}");
            proptest::prop_assert!(
                slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{slug}"
            );
            proptest::prop_assert!(
                !slug.starts_with('-') && !slug.ends_with('-') && !slug.contains("--"),
                "{slug}"
            );
            proptest::prop_assert_eq!(id_from_slug(&slug), Some(id));
        }

        /// Whatever a client puts in the URL: no panic, and an id only when the slug ends in the
        /// one spelling of a positive id that `slug_for` writes (no sign, no leading zeros), so
        /// one article has one slug per title.
        #[test]
        fn any_path_segment_gives_an_id_only_for_its_canonical_spelling(segment in "\\PC{0,40}") {
            if let Some(id) = id_from_slug(&segment) {
                proptest::prop_assert!(id > 0);
                let suffix = segment.rsplit('-').next().unwrap_or_default();
                proptest::prop_assert_eq!(suffix, to_base36(id));
            }
        }

        /// Strictness: a slug with any one character of its id replaced, removed or doubled
        /// (a typo, or a client probing neighbouring ids) never gives the same id back, so it
        /// never reaches the article the slug was made for.
        #[test]
        fn a_slug_with_its_id_edited_never_gives_that_id(
            title in "\\PC{0,40}",
            id in 1..=i64::MAX,
            at in proptest::prelude::any::<proptest::sample::Index>(),
            replacement in proptest::char::any(),
            edit in 0..3_u8,
        ) {
            let slug = slug_for(&title, id);
            let digits = to_base36(id);
            let start = slug.len() - digits.len();
            let at = start + at.index(digits.len());
            let original = slug[at..].chars().next().unwrap_or_default();
            let edited = match edit {
                0 => {
                    proptest::prop_assume!(replacement != original);
                    format!("{}{replacement}{}", &slug[..at], &slug[at + 1..])
                }
                1 => format!("{}{}", &slug[..at], &slug[at + 1..]),
                _ => format!("{}{original}{}", &slug[..=at], &slug[at + 1..]),
            };
            proptest::prop_assert_ne!(id_from_slug(&edited), Some(id), "{} -> {}", slug, edited);
        }

        /// The same, for segments built to look like slugs (digits and letters after a dash).
        #[test]
        fn slug_like_segments_give_an_id_only_for_its_canonical_spelling(
            segment in "[a-z]{0,5}-[0-9a-z]{0,3}[0-9a-zA-Z+]{0,12}",
        ) {
            if let Some(id) = id_from_slug(&segment) {
                let suffix = segment.rsplit('-').next().unwrap_or_default();
                proptest::prop_assert_eq!(suffix, to_base36(id));
            }
        }
    }

    #[test]
    fn long_titles_are_cut() {
        let slug = slug_for(&"word ".repeat(100), 7);
        assert!(slug.len() <= MAX_TITLE_PART + 2 + 1);
        assert!(slug.ends_with("-7"));
    }
}
