-- Distinct webhook bodies for wrk, as a sender sends them:
--
--   wrk -s bench/webhooks.lua URL -- population [ACCOUNTS] [TAG]
--       ACCOUNTS accounts (default 10,000) syncing again and again: nine in
--       ten SyncAccount, the rest LoginFailedError, so most events change no
--       account's state
--   wrk -s bench/webhooks.lua URL -- new [TAG]
--       a new account in every webhook (nine in ten SyncAccount, the rest
--       LoginFailedError): every event changes an account
--
-- TAG keeps the accounts of one run apart from another's. Each body is
-- distinct (the user's loginName counts the requests): byte-identical copies
-- in flight together would be stored once, which is not what a benchmark of
-- distinct events means to measure. Prints one JSON line at the end.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1] or "population"
  if mode == "new" then
    accounts, tag = nil, args[2] or "run"
  else
    accounts, tag = tonumber(args[2] or "10000"), args[3] or "run"
  end
  counter = 0
  wrk.method = "POST"
  wrk.headers["content-type"] = "application/json"
  wrk.headers["x-client-id"] = "bench-client"
end

function request()
  counter = counter + 1
  local n = counter * 64 + id
  local account
  if accounts then
    account = string.format("p%07d", n % accounts)
  else
    account = string.format("%s-%d-%d", tag, id, counter)
  end
  local body
  if counter % 10 == 0 then
    body = string.format(
      '{"hook":"SyncError","user":{"id":"u-%s","loginName":"user%d"},"account":{"id":"a-%s","provider":"Bank %d"},"error":"LoginFailedError"}',
      account, n, account, n % 40)
  else
    body = string.format(
      '{"hook":"SyncAccount","user":{"id":"u-%s","loginName":"user%d"},"account":{"id":"a-%s","provider":"Bank %d"}}',
      account, n, account, n % 40)
  end
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local non_2xx = summary.errors.status
  local failed = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"rate":%.1f,"non_2xx":%d,"socket_errors":%d,"p50_ms":%.3f,"p99_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    non_2xx, failed, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
