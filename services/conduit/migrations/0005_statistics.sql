-- Planner statistics only where the planner uses them. ANALYZE samples a table's rows and, for
-- every column, sorts the sample to find its common values and their spread, so that the planner
-- can estimate how many rows a WHERE, a join or an ORDER BY on that column will meet. Autovacuum
-- runs it again whenever a tenth of a table's rows have changed: for `articles`, whose every row
-- a favorite rewrites (`favorites_count`), that is about once a minute under the write-heavy mix.
--
-- No query filters, joins or sorts on the text an author wrote: titles, descriptions, bodies,
-- the tag copy (a tag's list reads `article_tags`) and comment bodies are only returned. Yet
-- reading, sorting and measuring their long values made the analyze of `articles` the dearest
-- step of every pass: on stage 7's 0.1-core database hosts, 35 ms of CPU of a pass's 51
-- (the worker's start-up included), and a pass stalls the host's requests while it runs
-- (stages/07-distributed/README.md, "What a pass costs"; with this file, 20 of 31). A
-- statistics target of 0 leaves a column out of ANALYZE; the planner then uses default
-- estimates for it, which no query asks for.
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
-- made `articles` the one large table of every pass. Half: on a shard of four (about 2,500
-- articles) 1,300 changes instead of 300, so every few minutes rather than every minute.
ALTER TABLE articles SET (autovacuum_analyze_scale_factor = 0.5);
