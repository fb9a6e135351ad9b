-- wrk script: a different token on every request. Tokens come one per line from args[1]; each
-- wrk thread takes its own slice (args[2] = thread count), so no token repeats across threads.
-- done() warns if the run outlasted the tokens (then tokens did repeat).
local counter = 1
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local tokens, n, i = {}, 0, 0
function init(args)
  local nthreads = tonumber(args[2])
  local k = 0
  for line in io.lines(args[1]) do
    if k % nthreads == (id - 1) then
      n = n + 1
      tokens[n] = line
    end
    k = k + 1
  end
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end

function done(summary, latency, requests)
  local total = 0
  for _ in io.lines(FRESH_FILE or os.getenv("FRESH_FILE")) do total = total + 1 end
  if summary.requests > total then
    io.write(string.format("WARNING: %d requests but only %d tokens: tokens repeated\n", summary.requests, total))
  end
end
