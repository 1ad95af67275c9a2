-- wrk script: optional Accept header from $BENCH_ACCEPT, machine-readable summary on stdout.
local accept = os.getenv("BENCH_ACCEPT")
if accept ~= nil and accept ~= "" then
  wrk.headers["Accept"] = accept
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
