-- wrk script of the benchmark's HTTP workload (benchmarks/demo_http.py): every request
-- POSTs one text, {"text": "<n>: <sentence>"}, the minilm bench model's samples
-- (benchmarks/models.py); at the end, one JSON line with the figures the harness reads.
local sentences = {
    "The quick brown fox jumps over the lazy dog.",
    "Batching many small requests keeps the accelerator busy.",
    "How far is the nearest train station from here?",
    "A worker drains its queue and runs one forward pass per batch.",
}
local headers = {["Content-Type"] = "application/json"}
local started = 0
counter = 0  -- set per thread by setup(), so threads send different texts

function setup(thread)
    thread:set("counter", started * 1000000)
    started = started + 1
end

function request()
    counter = counter + 1
    local text = counter .. ": " .. sentences[counter % #sentences + 1]
    return wrk.format("POST", nil, headers, '{"text": "' .. text .. '"}')
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        '{"requests": %d, "duration_us": %d, "failed": %d, "p50_us": %d, "p99_us": %d}\n',
        summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
