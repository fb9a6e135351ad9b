-- wrk script: a different token on every request. Tokens come one per line from args[1]; each
-- wrk thread takes its own slice (args[2] = thread count), so no token repeats across threads.
-- A thread that runs out of its slice starts over and says so: done() then prints a WARNING
-- (repeated tokens would hit keygate's cache and flatter it), and bench/load.sh fails the run.
local counter = 1
local threads = {}
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local tokens, n, i = {}, 0, 0
wrapped = false
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
  if i > n then
    i = 1
    wrapped = true
  end
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    if thread:get("wrapped") then
      io.write("WARNING: a wrk thread ran out of fresh tokens and repeated them; raise FRESH_TOKENS\n")
      return
    end
  end
end
