-- POST /predict: one raw transaction per request, a new transaction_id every time.
--
-- WRK_SAMPLE  a Lua file returning {{customer_id, terminal_id, amount}, ...}: real pairs
-- WRK_RUN     a prefix unique to this wrk run (ids never repeat across runs)
-- WRK_START_S epoch seconds of the first transaction; WRK_STEP_S seconds between transactions
-- WRK_THREADS the -t value: thread k sends sequence numbers k, k + T, k + 2T, ...
local sample = dofile(os.getenv("WRK_SAMPLE"))
local run = os.getenv("WRK_RUN")
local start = tonumber(os.getenv("WRK_START_S"))
local step = tonumber(os.getenv("WRK_STEP_S"))
local threads = tonumber(os.getenv("WRK_THREADS"))
local headers = {["Content-Type"] = "application/json"}
local created = 0
local counter = 0
tid = 0

function setup(thread)
  thread:set("tid", created)
  created = created + 1
end

function request()
  local seq = counter * threads + tid
  counter = counter + 1
  -- a multiplicative hash spreads consecutive requests over the customer/terminal sample
  local pick = sample[(seq * 2654435761) % #sample + 1]
  local body = string.format(
    '{"transaction_id":"%s-%d-%d","tx_datetime":"%s","customer_id":"%s",'
      .. '"terminal_id":"%s","tx_amount":%.2f}',
    run, tid, counter, os.date("!%Y-%m-%dT%H:%M:%S", math.floor(start + seq * step)),
    pick[1], pick[2], pick[3])
  return wrk.format("POST", nil, headers, body)
end
