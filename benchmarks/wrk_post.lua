-- wrk script: the same streamed chat request every time (max_tokens from env WRK_TOKENS).
local n = os.getenv("WRK_TOKENS") or "16"
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"zero","messages":[{"role":"user","content":"hello [[wrk]]"}],"max_tokens":' .. n ..
  ',"stream":true,"stream_options":{"include_usage":true}}'
