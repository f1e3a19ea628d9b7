//! Ids and buckets: an id made by `next_id_in(bucket)` carries that bucket, as `db::bucket_of`
//! reads it, and a slug carries its article's id, so it names the bucket (and with the bucket
//! map, the shard) too. `next_id()` gives the shard's own number as the bucket.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use archlab::postgres::TestPostgres;
use conduit::{db, slug};
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn an_id_in_a_bucket_is_found_in_that_bucket_by_id_and_by_slug() {
    let pg = TestPostgres::start().await.unwrap();
    let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
    db::MIGRATOR.run(&mut conn).await.unwrap();
    for bucket in [0_u8, 1, 7, 255] {
        let ids: Vec<i64> = sqlx::query_scalar("SELECT next_id_in($1) FROM generate_series(1, 3)")
            .bind(i32::from(bucket))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}: ordered");
        for id in ids {
            assert!(id > 0 && id < 1 << 53, "{id}: exact in a JSON number");
            assert_eq!(db::bucket_of(id), bucket, "{id}");
            let s = slug::slug_for("How to train your dragon", id);
            assert_eq!(
                slug::id_from_slug(&s).map(db::bucket_of),
                Some(bucket),
                "{s}"
            );
        }
    }
    sqlx::query("UPDATE shard_identity SET shard_id = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    let id: i64 = sqlx::query_scalar("SELECT next_id()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(db::bucket_of(id), 3, "next_id(): the shard's own number");
}
