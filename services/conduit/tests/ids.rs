//! Ids and shards: an id made by the database's `next_id()` names the shard that made it, as
//! `db::shard_of` reads it, and a slug carries its article's id, so it names the shard too.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use archlab::postgres::TestPostgres;
use conduit::{db, slug};
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn next_id_on_a_shard_is_found_on_that_shard_by_id_and_by_slug() {
    let pg = TestPostgres::start().await.unwrap();
    let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
    db::MIGRATOR.run(&mut conn).await.unwrap();
    for shard in [0_u8, 1, 7, 255] {
        sqlx::query("UPDATE shard_identity SET shard_id = $1")
            .bind(i32::from(shard))
            .execute(&mut conn)
            .await
            .unwrap();
        let ids: Vec<i64> = sqlx::query_scalar("SELECT next_id() FROM generate_series(1, 3)")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{ids:?}: ordered within a shard"
        );
        for id in ids {
            assert!(id > 0 && id < 1 << 53, "{id}: exact in a JSON number");
            assert_eq!(db::shard_of(id), shard, "{id}");
            let s = slug::slug_for("How to train your dragon", id);
            assert_eq!(slug::id_from_slug(&s).map(db::shard_of), Some(shard), "{s}");
        }
    }
}
