#!/usr/bin/env python3
"""small_table_plans.py: the plans PostgreSQL picks for the app's by-id reads when a table is as
small as one of stage 7's shards holds, with the default random_page_cost and with the lab's.

    python3 scripts/bench/small_table_plans.py --out stages/07-distributed/results/small-table-plans.json

What: a throwaway PostgreSQL (its own folder, a Unix socket only), the app's migrations, then for
each size (the users and articles of one database holding 1,000 users and 10,000 articles, and
of one of four shards holding a quarter of them) the two statements that read rows by id with
their authors: the app's `load_articles` (services/conduit/src/api/shared.rs) and the author
lookup of comment lists (api/comments.rs); and a shard's share of the global list's cached head
(api/articles.rs, `page_keys`: its newest 100 keys), whose calls on four shards touched 67
buffers each (db-cost-4-shards-random-page-cost-1.1.json). Each is prepared and run as the app runs it (a generic
plan: the app sets plan_cache_mode = force_generic_plan, services/conduit/src/db/mod.rs) for one
and for five ids (the head: 100 keys from the first), under random_page_cost = 4 (PostgreSQL's default) and 1.1 (the lab's,
stages/lab/src/postgres.rs, BASE_SETTINGS), and the plan's shape, its shared buffers and its
execution time are recorded.
Why: on four shards `load_articles` touched 19 buffers and took 0.28 ms a call where one database
took 6 and 0.08 ms (db-cost-{1,4}-shards-open-loop.json). The plan is what differs: a shard's
users table is small enough that the planner, told that a random page costs four sequential ones,
scans and hashes all of it rather than probe its index for one author.
Rows are synthetic but sized like the seeded ones (an argon2 hash, a short bio, an image URL; a
body of about a kilobyte; articles a minute apart). The tables are vacuumed, so every page is
marked visible to all, which a live stage's newest pages are not. Plans and buffers do not depend on the machine; times do, and are
one execution each, for scale only.
"""
import argparse, datetime, json, os, platform, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, git_state, pg_bin, version, write_result

# (name, users, articles): one database of the seeded set, and a quarter of it on one shard.
SIZES = [("one database", 1000, 10000), ("one of four shards", 250, 2500)]
COSTS = ["4", "1.1"]
# name: (statement, its parameters' types, [(what a run asks, its arguments)]).
BY_ID = [("1 id", "'{17}'"), ("5 ids", "'{17,18,19,20,21}'")]
STATEMENTS = {
    "load_articles": (
        "SELECT a.id, a.author_id, a.slug, a.title, a.description, a.body, a.tag_list, "
        "a.created_at, a.updated_at, a.favorites_count, u.username, u.bio, u.image "
        "FROM articles a JOIN users u ON u.id = a.author_id WHERE a.id = ANY($1)", "bigint[]", BY_ID),
    "comment_authors": ("SELECT id, username, bio, image FROM users WHERE id = ANY($1)", "bigint[]", BY_ID),
    # A shard's share of the global list's cached head (api/articles.rs, `page_keys` as
    # `sharded_list_ids` runs it for the head): its newest 100 keys with the kept count.
    "list_head_keys": (
        "SELECT a.id, a.created_at, (SELECT articles FROM article_count) FROM articles a "
        "WHERE true ORDER BY a.created_at DESC, a.id DESC LIMIT $1 OFFSET $2", "bigint, bigint",
        [("the head: 100 from 0", "100, 0")]),
}


def as_postgres(cmd):
    """`cmd` as the postgres OS user when we are root (PostgreSQL refuses root)."""
    return (["runuser", "-u", "postgres", "--"] + cmd) if os.geteuid() == 0 else cmd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="result file (JSON); printed only when absent")
    args = ap.parse_args()
    provenance = git_state()
    folder = tempfile.mkdtemp(prefix="archlab-plans-")
    os.chmod(folder, 0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data = os.path.join(folder, "data")
    subprocess.run(as_postgres([pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    server = subprocess.Popen(as_postgres([pg_bin("postgres"), "-D", data, "-k", folder, "-c", "listen_addresses=",
                                           "-c", "fsync=off"]), stderr=subprocess.DEVNULL)
    try:
        def psql(sql, db="postgres"):
            return subprocess.run([pg_bin("psql"), "-h", folder, "-U", "postgres", "-d", db, "-X", "-At",
                                   "-v", "ON_ERROR_STOP=1"], input=sql, text=True, check=True,
                                  capture_output=True).stdout
        for _ in range(100):
            try:
                psql("SELECT 1")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        results = []
        for name, users, articles in SIZES:
            db = f"size_{users}"
            psql(f"CREATE DATABASE {db}")
            for migration in sorted(os.listdir(os.path.join(ROOT, "services/conduit/migrations"))):
                with open(os.path.join(ROOT, "services/conduit/migrations", migration)) as f:
                    psql(f.read(), db)
            psql(f"""
                INSERT INTO users (id, username, email, password_hash, bio, image)
                SELECT g, 'user' || g, 'user' || g || '@seed.archlab.test',
                       '$argon2id$v=19$m=19456,t=2,p=1$' || md5(g::text) || '$' || md5('h' || g) || md5('i' || g),
                       'bio of user ' || g || ', who writes about ' || md5(g::text),
                       'http://127.0.0.1:8080/api/media/' || g || '.png'
                FROM generate_series(1, {users}) g;
                INSERT INTO articles (id, slug, author_id, title, description, body, tag_list, created_at)
                SELECT g, 'article-' || g, 1 + g % {users}, 'Article ' || g, 'about article ' || g,
                       repeat('A paragraph of the article body. ', 30), ARRAY['tag' || g % 50],
                       now() - ({articles} - g) * interval '1 minute'
                FROM generate_series(1, {articles}) g;
                VACUUM ANALYZE;""", db)
            pages = psql("SELECT relpages FROM pg_class WHERE relname = 'users'", db).strip()
            for cost in COSTS:
                for statement, (sql, types, cases) in STATEMENTS.items():
                    for case, arguments in cases:
                        out = psql(f"""
                            SET plan_cache_mode = force_generic_plan;
                            SET random_page_cost = {cost};
                            PREPARE s({types}) AS {sql};
                            EXECUTE s({arguments});
                            EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE s({arguments});""", db)
                        plan = json.loads(out[out.index("["):])[0]
                        top = plan["Plan"]

                        def nodes(node):
                            yield node["Node Type"] + (f" on {node['Relation Name']}" if "Relation Name" in node else "")
                            for child in node.get("Plans", []):
                                yield from nodes(child)
                        results.append({
                            "size": name, "users": users, "articles": articles, "users_pages": int(pages),
                            "random_page_cost": float(cost), "statement": statement, "case": case,
                            "plan": " > ".join(nodes(top)),
                            "shared_buffers_hit": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
                            "execution_ms": plan["Execution Time"],
                        })
                        r = results[-1]
                        print(f"{name:>18} rpc {cost:>3} {statement:>15} {case}: "
                              f"{r['shared_buffers_hit']:3} buffers {r['execution_ms']:6.3f} ms  {r['plan']}")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "benchmark": "plans of the app's by-id reads on one database's and one shard's tables, by random_page_cost",
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "scripts/bench/small_table_plans.py" + (f" --out {args.out}" if args.out else ""),
        "settings": {"plan_cache_mode": "force_generic_plan (as the app)", "sizes": SIZES,
                     "statements": {name: sql for name, (sql, _, _) in STATEMENTS.items()}},
        "results": results,
        "provenance": {**provenance, "postgres": version([pg_bin("postgres"), "--version"]),
                       "os": f"{platform.system()} {platform.release()}"},
    }
    if args.out:
        write_result(os.path.join(ROOT, args.out) if not os.path.isabs(args.out) else args.out, result)


if __name__ == "__main__":
    main()
