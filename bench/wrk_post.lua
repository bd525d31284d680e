-- wrk script for the proxy benchmark: POST the same ~600-byte OIP v2 request on every call and
-- print one machine-readable summary line (prefixed "BENCH-JSON ") when the run ends.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"id":"bench","inputs":[{"name":"x","datatype":"FP32","shape":[1,64],"data":['
  .. string.rep("0.5,", 63) .. '0.5]}]}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
