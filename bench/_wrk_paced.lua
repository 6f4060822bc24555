-- wrk: pause 1 ms after each response, so N connections offer at most ~N x 1000 requests/s
function delay()
  return 1
end
