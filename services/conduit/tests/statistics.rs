//! ANALYZE gathers statistics for the columns queries filter, join or sort on, and leaves out
//! the text that is only ever returned; `articles` waits for half its rows to change
//! (`migrations/0005_statistics.sql`). Its analyze was the dearest part of every autovacuum
//! pass on stage 7's small database hosts.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use archlab::postgres::TestPostgres;
use conduit::db;
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn analyze_leaves_out_the_text_no_query_filters_on() {
    let pg = TestPostgres::start().await.unwrap();
    let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
    db::MIGRATOR.run(&mut conn).await.unwrap();
    for statement in [
        "INSERT INTO users (id, username, email, password_hash) VALUES (1, 'a', 'a@x', 'h')",
        "INSERT INTO articles (id, slug, author_id, title, description, body, tag_list)
             SELECT i, 'slug-' || i, 1, 'title ' || i, 'about ' || i, repeat('word ', i % 50),
                    ARRAY['tag' || i % 7]
             FROM generate_series(1, 200) AS i",
        "INSERT INTO comments (article_id, author_id, body)
             SELECT i, 1, 'comment ' || i FROM generate_series(1, 200) AS i",
        "ANALYZE articles, comments",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let gathered: Vec<String> = sqlx::query_scalar(
        "SELECT tablename || '.' || attname FROM pg_stats
         WHERE tablename IN ('articles', 'comments') ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for wanted in [
        "articles.author_id",
        "articles.created_at",
        "comments.article_id",
    ] {
        assert!(
            gathered.iter().any(|c| c == wanted),
            "{wanted} in {gathered:?}"
        );
    }
    for left_out in [
        "articles.title",
        "articles.description",
        "articles.body",
        "articles.tag_list",
        "comments.body",
    ] {
        assert!(
            !gathered.iter().any(|c| c == left_out),
            "{left_out} in {gathered:?}"
        );
    }
}

#[tokio::test]
async fn articles_are_analyzed_when_half_of_them_changed() {
    let pg = TestPostgres::start().await.unwrap();
    let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
    db::MIGRATOR.run(&mut conn).await.unwrap();
    let options: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(reloptions) FROM pg_class WHERE oid = 'articles'::regclass",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(options, ["autovacuum_analyze_scale_factor=0.5"]);
}
