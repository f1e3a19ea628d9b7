"""Reads a schemathesis run's HAR file and checks that an article the run created is found
until the run itself renamed or deleted it.

schemathesis's own check of this ("created resource not found", ST302) is off for the article
operations (scripts/schemathesis.toml): it knows about DELETE, not that changing an article's
title changes its slug, so every GET of the slug from before a rename was reported. This check
follows renames too. What it still catches is what ST302 is for: an article answered 404 that
nothing had renamed or deleted, such as a read sent to a replica that had not yet replayed the
write (read-your-writes broken) or to the wrong shard.

    python3 scripts/lib/created_articles_stay_found.py RUN.har

Exit status 1 if any 404 for an article is unexplained; each is printed.
"""

import json
import re
import sys

ARTICLE_PATH = re.compile(r"^/api/articles/([^/]+)(/.*)?$")


def check(har_path):
    entries = json.load(open(har_path, encoding="utf-8"))["log"]["entries"]
    created = {}  # slug -> index of the request that created it (or renamed to it)
    gone = {}  # slug -> index of the rename or delete that retired it
    explained, unexplained = 0, []
    for index, entry in enumerate(entries):
        request, response = entry["request"], entry["response"]
        path = re.sub(r"^https?://[^/]+", "", request["url"]).split("?")[0]
        method, status = request["method"], response["status"]
        body = response.get("content", {}).get("text") or ""
        if method == "POST" and path == "/api/articles" and status == 201:
            created.setdefault(json.loads(body)["article"]["slug"], index)
            continue
        match = ARTICLE_PATH.match(path)
        if not match or match.group(1) == "feed":
            continue
        slug, rest = match.group(1), match.group(2)
        if rest is None and method == "PUT" and status == 200:
            new_slug = json.loads(body)["article"]["slug"]
            if new_slug != slug:
                gone.setdefault(slug, index)
                created.setdefault(new_slug, index)
        elif rest is None and method == "DELETE" and status == 204:
            gone.setdefault(slug, index)
        # A 404 naming the article (a missing comment answers `comment`).
        elif status == 404 and slug in created and '"article"' in body:
            if slug in gone and gone[slug] < index:
                explained += 1
            else:
                unexplained.append(f"request {index}: {method} {path} answered 404, created by "
                                   f"request {created[slug]} and never renamed or deleted")
    print(f"{har_path}: {len(entries)} requests, {len(created)} article slugs created, "
          f"{explained} answered 404 after the run renamed or deleted them, "
          f"{len(unexplained)} unexplained")
    for line in unexplained:
        print("  " + line)
    return not unexplained


if __name__ == "__main__":
    results = [check(path) for path in sys.argv[1:]]
    sys.exit(0 if results and all(results) else 1)
