-- wrk script: each request GETs a path picked uniformly at random from the file named by the
-- environment variable PATHS_FILE (one path per line). Used for "read one article" benchmarks, so
-- the database sees the whole data set, not one hot row.
local paths = {}
for line in io.lines(os.getenv("PATHS_FILE")) do
  paths[#paths + 1] = line
end
math.randomseed(os.time())

request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
