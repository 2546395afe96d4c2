-- Cycles through pre-generated requests, one file per wrk thread, so every request carries
-- a distinct body with its own signature (no 409s) and wrk computes nothing per request.
-- Each line of the file: <X-Instantly-Signature value> TAB <body>. Path from BENCH_PATH.
-- With BENCH_DELAY_MS set, each connection waits that long between requests (a fixed rate).
local threads = {}
local counter = 1

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  path = os.getenv("BENCH_PATH") or "/webhooks/instantly"
  local file = assert(io.open(os.getenv("BENCH_BODIES") .. "." .. id, "r"))
  requests = {}
  for line in file:lines() do
    local tab = line:find("\t", 1, true)
    local signature, body = line:sub(1, tab - 1), line:sub(tab + 1)
    requests[#requests + 1] = wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["X-Instantly-Signature"] = signature,
    }, body)
  end
  file:close()
  index = 0
  wrapped = 0
end

function request()
  index = index + 1
  if index > #requests then
    index = 1
    wrapped = wrapped + 1
  end
  return requests[index]
end

-- Defined only for a fixed rate: wrk schedules through a timer whenever delay() exists.
-- Its timer takes whole milliseconds; a fractional delay (14.3) is kept on average by
-- carrying the fraction over: 14, 14, 15, 14, ...
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if delay_ms > 0 then
  local whole = math.floor(delay_ms)
  local fraction = delay_ms - whole
  local owed = 0
  function delay()
    owed = owed + fraction
    if owed >= 1 then
      owed = owed - 1
      return whole + 1
    end
    return whole
  end
end

-- One JSON line the harness parses; latencies in microseconds.
function done(summary, latency, requests)
  local wrapped = 0
  for _, thread in ipairs(threads) do
    wrapped = wrapped + thread:get("wrapped")
  end
  local errors = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"wrapped":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout, wrapped,
    latency:percentile(50), latency:percentile(99), latency.max))
end
