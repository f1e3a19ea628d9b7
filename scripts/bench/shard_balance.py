#!/usr/bin/env python3
"""shard_balance.py: how evenly the benchmark's data and the harness's picks fall on the shards.

    python3 scripts/bench/shard_balance.py > stages/07-distributed/results/shard-balance.txt
    python3 scripts/bench/shard_balance.py 2 > stages/07-distributed/results/shard-balance-2-shards.txt

What: `archlab up 7 --shards N --fresh` (N the argument, 4 if none) with the release binaries
(own state folder, network 127.61.x.x), `archlab seed 7` (the sweeps' data set: 1,000 users, 10,000 articles, seed 42),
then on each shard's primary: the users whose home it is, its articles, comments, favorites and follows; and the share
of the harness's article picks it would get under the write-heavy mix's Zipf law (exponent 1,
rank 1 the newest article, as the harness reads the global list; under a uniform law a shard's
share of the picks is its share of the articles); then `archlab down`.
Why: in the shard sweeps one database host (db-3) is the busiest with the Zipf mix and still
with every article equally popular (`write-heavy-uniform.toml`). Sharding by author places
whole authors, and the seed gives a few authors many articles (as sites have prolific writers):
this counts whether the data, not only the reads, are uneven.
"""
import os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, own_stage, psql, run, users_at_home

NET = "61"
SHARDS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
TABLES = ("users", "articles", "comments", "favorites", "follows")


def main():
    commit = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).strip()
    print(f"# scripts/bench/shard_balance.py at {commit}, "
          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", flush=True)
    print(f"# archlab --net {NET} up 7 --shards {SHARDS} --fresh; archlab seed 7", flush=True)
    with own_stage(7, ["--shards", str(SHARDS)], NET, "archlab-balance-") as (lab, databases):
        run(lab + ["seed", "7"])
        # Users: those whose home is the shard (it owns their other rows).
        where = {"users": users_at_home(SHARDS)}
        counts = {db["host"]: {t: int(psql(db, f"SELECT count(*) FROM {t} {where.get(t, '')}")) for t in TABLES}
                  for db in databases}
        # Every article with its shard, newest first (the harness's order: the global list's).
        articles = []
        for db in databases:
            for line in psql(db, "SELECT (extract(epoch FROM created_at) * 1e6)::bigint, id "
                                 "FROM articles").split():
                at, article = line.split("|")
                articles.append((int(at), int(article), db["host"]))
        articles.sort(reverse=True)
        zipf = {db["host"]: 0.0 for db in databases}
        for rank, (_, _, host) in enumerate(articles, start=1):
            zipf[host] += 1.0 / rank
        total_zipf = sum(zipf.values())
        top = [host for _, _, host in articles[:10]]

    hosts = [db["host"] for db in databases]
    print("\n| shard host | " + " | ".join(TABLES) + " | share of articles (and of uniform picks) | Zipf picks |")
    print("|---|" + "---:|" * (len(TABLES) + 2))
    n_articles = sum(counts[h]["articles"] for h in hosts)
    for h in hosts:
        c = counts[h]
        print(f"| {h} | " + " | ".join(str(c[t]) for t in TABLES)
              + f" | {100 * c['articles'] / n_articles:.1f} % | {100 * zipf[h] / total_zipf:.1f} % |")
    print(f"\nthe ten newest articles (the most picked under Zipf) are on: {', '.join(top)}")
    busiest = max(hosts, key=lambda h: zipf[h])
    print(f"busiest under Zipf: {busiest}, {SHARDS * zipf[busiest] / total_zipf:.2f} times the mean; "
          f"by articles: {max(hosts, key=lambda h: counts[h]['articles'])}, "
          f"{SHARDS * max(counts[h]['articles'] for h in hosts) / n_articles:.2f} times the mean")


if __name__ == "__main__":
    main()
