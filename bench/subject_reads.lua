-- wrk script of bench/subject_reads.py: GETs rotating over a file of paths, with a bearer token.
--
-- wrk <url> -s bench/subject_reads.lua -- PATHS_FILE TOKEN [RATE]
--
-- Without RATE every connection sends as fast as it is answered (wrk's own latency histogram).
-- With RATE (requests per second for the whole run; run one connection per thread, -t N -c N)
-- each connection sends on a fixed schedule, and a response's latency is also measured from the
-- moment its request was due (not only from when it was sent), so a stall that delays the
-- following requests counts against all of them (no coordinated omission). done() prints one
-- line "SUBJECT_READS {json}" for the bench to parse.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } sr_timespec;
int clock_gettime(int clock_id, sr_timespec *tp);
]]
local clock = ffi.new("sr_timespec")

local function now_ms()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local threads = {}
local counter = 0

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local paths = {}
local position = 1
local interval = nil -- ms between this connection's requests when paced
local due = nil -- when the next request is due (paced)
local sent_due = {} -- due time of each request in flight, oldest first
statuses = {}
corrected = {} -- ms from due time to response, paced runs only

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      table.insert(paths, line)
    end
  end
  wrk.headers["Authorization"] = "Bearer " .. args[2]
  wrk.headers["Accept"] = "application/json"
  position = (index * 7919) % #paths + 1 -- threads start at different subjects
  if args[3] then
    local rate = tonumber(args[3])
    local per_connection = rate / tonumber(args[4] or 1)
    interval = 1000 / per_connection
    due = now_ms() + 50 + index * interval / tonumber(args[4] or 1)
  end
end

function delay()
  if interval == nil then
    return 0
  end
  local wait = due - now_ms()
  if wait < 0 then
    return 0
  end
  return math.floor(wait)
end

function request()
  local path = paths[position]
  position = position % #paths + 1
  if interval ~= nil then
    table.insert(sent_due, due)
    due = due + interval
  end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if interval ~= nil then
    local was_due = table.remove(sent_due, 1)
    if was_due ~= nil then
      table.insert(corrected, now_ms() - was_due)
    end
  end
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local counts = {}
  local lat = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for code, n in pairs(s) do
      counts[tostring(code)] = (counts[tostring(code)] or 0) + n
    end
    local c = thread:get("corrected")
    for _, v in ipairs(c) do
      table.insert(lat, v)
    end
  end
  table.sort(lat)
  local function pct(p)
    if #lat == 0 then
      return -1
    end
    local i = math.max(1, math.ceil(#lat * p / 100))
    return lat[i]
  end
  local parts = {}
  for code, n in pairs(counts) do
    table.insert(parts, string.format('"%s":%d', code, n))
  end
  io.write(string.format(
    'SUBJECT_READS {"requests":%d,"seconds":%.3f,"rate":%.1f,"socket_errors":%d,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"due_p50_ms":%.3f,"due_p99_ms":%.3f,"due_max_ms":%.3f,"statuses":{%s}}\n',
    summary.requests, seconds, summary.requests / seconds,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, pct(50), pct(99), lat[#lat] or -1, table.concat(parts, ",")))
end
