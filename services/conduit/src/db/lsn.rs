//! A position in PostgreSQL's write-ahead log (an LSN), the clock of replication.
//!
//! Every change the primary commits is a record at some position of its WAL; a replica replays
//! the records in order, so "the replica has replayed up to position P" means "it shows every
//! commit whose record ends at or before P". Comparing positions is therefore how the app knows
//! whether a replica shows a given write, and it needs no clocks.
//!
//! PostgreSQL prints positions as `16/B374D848`; the app reads them as plain byte offsets
//! (`lsn - '0/0'`, a number), which order and subtract as numbers do.

use std::fmt;

/// A WAL position, as a byte offset from the start of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The SQL that reads the primary's position *after* everything committed so far.
    ///
    /// Normally the flushed position: a commit is acknowledged only once its record is flushed
    /// (`synchronous_commit` on, `local`, `remote_write` or `remote_apply`), so the flushed
    /// position is past every acknowledged commit, and it is all a replica can ever receive (WAL
    /// is streamed once flushed). With `synchronous_commit = off` (the lab's test servers) a
    /// commit is acknowledged before its flush; then the insert position, which is past every
    /// record written. The insert position would do in both cases, but it also counts WAL of
    /// transactions still running, which a replica may never get if the primary dies: a user
    /// holding it would wait for a replica that can never catch up.
    pub const PRIMARY_POSITION_SQL: &'static str =
        "SELECT (CASE WHEN current_setting('synchronous_commit') = 'off' \
                      THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_flush_lsn() END \
                 - '0/0'::pg_lsn)::int8";

    /// Bytes from `earlier` to `self` (0 if `earlier` is ahead).
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// From the number PostgreSQL gives for `lsn - '0/0'` (never negative).
    pub fn from_sql(offset: i64) -> Lsn {
        Lsn(u64::try_from(offset).unwrap_or(0))
    }
}

impl fmt::Display for Lsn {
    /// PostgreSQL's own notation (`16/B374D848`), so positions in logs match `pg_stat_replication`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_print_as_postgres_does_and_subtract_without_going_negative() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(100).bytes_after(Lsn(40)), 60);
        assert_eq!(Lsn(40).bytes_after(Lsn(100)), 0);
        assert_eq!(Lsn::from_sql(-1), Lsn(0));
    }
}
