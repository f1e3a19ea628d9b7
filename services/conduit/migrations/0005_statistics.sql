-- Planner statistics only where the planner uses them. ANALYZE samples a table's rows and, for
-- every column, sorts the sample to find its common values and their spread, so that the planner
-- can estimate how many rows a WHERE, a join or an ORDER BY on that column will meet. Autovacuum
-- runs it again whenever a tenth of a table's rows have changed: for `articles`, whose every row
-- a favorite rewrites (`favorites_count`), that is about once a minute under the write-heavy mix.
--
-- No query filters, joins or sorts on the text an author wrote: titles, descriptions, bodies,
-- the tag copy (a tag's list reads `article_tags`) and comment bodies are only returned. Their
-- statistics were the dearest part of every pass (sorting long text by the locale's collation):
-- on stage 7's 0.1-core database hosts, 27 ms of CPU per analyze of `articles`, half of what
-- autovacuum spent in all, and a pass stalls the host's requests while it runs
-- (stages/07-distributed/README.md, "What sets the knee"). A statistics target of 0 leaves a
-- column out of ANALYZE; the planner then uses default estimates for it, which no query asks for.
ALTER TABLE articles
    ALTER COLUMN title SET STATISTICS 0,
    ALTER COLUMN description SET STATISTICS 0,
    ALTER COLUMN body SET STATISTICS 0,
    ALTER COLUMN tag_list SET STATISTICS 0;
ALTER TABLE comments ALTER COLUMN body SET STATISTICS 0;

-- And `articles` analyzed when half its rows have changed, not a tenth. The columns whose
-- statistics are left (the author, the creation time, the id and the slug) change only when an
-- article is written, but every favorite rewrites its article's row and so counts as a change:
-- under the write-heavy mix a tenth of a shard's articles "changed" every minute, which is what
-- made `articles` the one large table of every pass. Half: about every four to five minutes
-- there, while a new author's articles still reach the statistics within the hour.
ALTER TABLE articles SET (autovacuum_analyze_scale_factor = 0.5);
