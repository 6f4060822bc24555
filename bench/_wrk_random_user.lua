-- wrk: a new random "user" query value in every request (hotspot keys that never repeat)
request = function()
  return wrk.format("GET", "/?user=" .. math.random(1, 1000000000))
end
