-- wrk script: POST /token, RFC 8693 token exchange, for the scenarios of bench/run.py.
--   BENCH_WARM   file with the one subject token reused by warm requests
--   BENCH_COLD   file with fresh subject tokens, one per line, each used once
--   BENCH_WARM_SHARE  fraction of requests that are warm (1 = warm, 0 = cold, 0.9 = mixed)
--   BENCH_EXTRA_FORM  appended to every body as is (form-encoded, starting with "&"), e.g.
--                     "&client_secret=..." for a confidential client
--   BENCH_GRANT  "jwt-bearer": the cold lines are ID-JAGs, redeemed with the RFC 7523 grant by
--                the confidential client "agent" (its secret in BENCH_EXTRA_FORM)
--   BENCH_GRANT  "txn-token": the cold lines are client assertions of the workload
--                "orders-gateway" (private_key_jwt, each used once), each request asks a
--                Txn-Token for the subject token in BENCH_TXN_SUBJECT
--   BENCH_RESOURCE_PREFIX  when set, every warm request also asks for a resource of its
--                own, this prefix and a number no other request of the run uses (the scoped
--                scenario: one permissions question per exchange, unless an answer covers it)
--   BENCH_DPOP   file with DPoP proofs (RFC 9449), one per line: each warm request sends the
--                next one as its DPoP header; proofs are single-use, so each thread walks its
--                own share and counts any it has to send a second time (dpop_reused)
-- done() prints one JSON line: requests, duration, latency percentiles, errors.

local warm_share = tonumber(os.getenv("BENCH_WARM_SHARE") or "1")
local extra_form = os.getenv("BENCH_EXTRA_FORM") or ""
local counter = 0
local threads = {}
local form_type = "application/x-www-form-urlencoded"

local function read_lines(path)
  local lines = {}
  if path == nil or path == "" then return lines end
  for line in io.lines(path) do lines[#lines + 1] = line end
  return lines
end

local grant = os.getenv("BENCH_GRANT") or ""

local function body_for(token)
  if grant == "txn-token" then
    return "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
      .. "&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Atxn_token"
      .. "&audience=trust-domain.example"
      .. "&scope=countries%3Aread"
      .. "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"
      .. "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
      .. "&subject_token=" .. txn_subject
      .. "&client_assertion=" .. token
  end
  if grant == "jwt-bearer" then
    return "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
      .. "&client_id=agent"
      .. "&scope=countries%3Aread"
      .. extra_form
      .. "&assertion=" .. token
  end
  return "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
    .. "&client_id=spa"
    .. "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"
    .. "&audience=https%3A%2F%2Fcountries.example.test"
    .. "&scope=countries%3Aread"
    .. extra_form
    .. "&subject_token=" .. token
end

function setup(thread)
  thread:set("thread_id", counter)
  counter = counter + 1
  threads[#threads + 1] = thread
end

function init(args)
  txn_subject = read_lines(os.getenv("BENCH_TXN_SUBJECT"))[1] or ""
  warm_body = body_for(read_lines(os.getenv("BENCH_WARM"))[1] or "")
  cold = read_lines(os.getenv("BENCH_COLD"))
  proofs = read_lines(os.getenv("BENCH_DPOP"))
  nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  -- Each thread walks its own share of the cold tokens, so no token is used twice.
  next_cold = thread_id + 1
  cold_used = 0
  -- The same for DPoP proofs: a proof sent twice is refused (jti replay), so count reuses.
  next_proof = thread_id + 1
  proofs_wrapped = false
  dpop_reused = 0
  math.randomseed(thread_id * 7919 + 1)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = form_type
end

local function dpop_request()
  local proof = proofs[next_proof]
  if proofs_wrapped then dpop_reused = dpop_reused + 1 end
  next_proof = next_proof + nthreads
  if next_proof > #proofs then
    next_proof = thread_id + 1
    proofs_wrapped = true
  end
  -- wrk.format takes these headers instead of wrk.headers, not in addition to them.
  return wrk.format(nil, "/token", { ["Content-Type"] = form_type, ["DPoP"] = proof }, warm_body)
end

local function url_encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

local resource_prefix = os.getenv("BENCH_RESOURCE_PREFIX") or ""
local encoded_prefix = url_encode(resource_prefix)

function request()
  if #proofs > 0 then return dpop_request() end
  if warm_share >= 1 or (warm_share > 0 and math.random() < warm_share) or #cold == 0 then
    if resource_prefix ~= "" then
      next_resource = (next_resource or thread_id) + nthreads
      return wrk.format(nil, "/token", nil, warm_body .. "&resource=" .. encoded_prefix .. next_resource)
    end
    return wrk.format(nil, "/token", nil, warm_body)
  end
  local token = cold[next_cold]
  next_cold = next_cold + nthreads
  if next_cold > #cold then next_cold = thread_id + 1 end
  cold_used = cold_used + 1
  return wrk.format(nil, "/token", nil, body_for(token))
end

function done(summary, latency, requests)
  local used, reused = 0, 0
  for _, t in ipairs(threads) do
    used = used + (t:get("cold_used") or 0)
    reused = reused + (t:get("dpop_reused") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
    .. '"max_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d}, "cold_used": %d, "dpop_reused": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout, used, reused))
end
