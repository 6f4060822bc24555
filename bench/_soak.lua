-- wrk load for soak.py: every other request is GET /api (a flow rule that blocks most of them), the
-- rest GET /item?uid=<random in 0..9,999,999> (a hotspot rule per uid: almost every value is new).
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  math.randomseed(os.time() * 16 + id)
end

local n = 0
function request()
  n = n + 1
  if n % 2 == 0 then
    return wrk.format("GET", "/api")
  end
  return wrk.format("GET", "/item?uid=" .. math.random(0, 9999999))
end
