-- wrk script of bench/small_transactions.py: POSTs one-patient transaction Bundles, a Patient and
-- ENTRIES - 1 Observations about it, every resource a PUT with a fresh id: the Bundles
-- bench/bundle_sizes.py's bundle("transaction", n) makes, built here so the client costs almost
-- nothing beside the service it measures.
--
-- wrk <url> -s bench/small_transactions.lua -- ENTRIES SEED
--
-- Ids are unique across connections (the thread's index is part of each) and across runs against
-- the same database (SEED, a fresh random number per run, seeds the rest). done() prints one line
-- "SMALL_TX {json}" for the bench to parse.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local entries = 17
local made = 0
statuses = {}

function init(args)
  entries = tonumber(args[1])
  math.randomseed(tonumber(args[2]) + index * 7919)
  wrk.method = "POST"
  wrk.path = "/fhir"
  wrk.headers["Content-Type"] = "application/fhir+json"
  wrk.headers["Accept"] = "application/fhir+json"
  wrk.headers["Prefer"] = "return=minimal"
end

local function fresh_id()
  made = made + 1
  return string.format(
    "%08x-%04x-4%03x-%04x-%04x%08x",
    math.random(0, 0x7fffffff), math.random(0, 0xffff), math.random(0, 0xfff),
    0x8000 + math.random(0, 0x3fff), index, made)
end

local PATIENT = '{"fullUrl":"urn:uuid:%s","resource":{"resourceType":"Patient","id":"%s",' ..
  '"gender":"female"},"request":{"method":"PUT","url":"Patient/%s"}}'
local OBSERVATION = '{"fullUrl":"urn:uuid:%s","resource":{"resourceType":"Observation",' ..
  '"id":"%s","status":"final","code":{"coding":[{"system":"http://loinc.org",' ..
  '"code":"8867-4"}]},"subject":{"reference":"Patient/%s"},"valueQuantity":{"value":%d,' ..
  '"unit":"/min"}},"request":{"method":"PUT","url":"Observation/%s"}}'

function request()
  local patient = fresh_id()
  local parts = { string.format(PATIENT, patient, patient, patient) }
  for n = 0, entries - 2 do
    local observation = fresh_id()
    parts[#parts + 1] = string.format(
      OBSERVATION, observation, observation, patient, 60 + n % 40, observation)
  end
  local body = '{"resourceType":"Bundle","type":"transaction","entry":[' ..
    table.concat(parts, ",") .. "]}"
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local parts = {}
  local counts = {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      counts[tostring(code)] = (counts[tostring(code)] or 0) + n
    end
  end
  for code, n in pairs(counts) do
    table.insert(parts, string.format('"%s":%d', code, n))
  end
  io.write(string.format(
    'SMALL_TX {"requests":%d,"seconds":%.3f,"socket_errors":%d,"p50_ms":%.3f,' ..
    '"p99_ms":%.3f,"statuses":{%s}}\n',
    summary.requests, seconds,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, table.concat(parts, ",")))
end
