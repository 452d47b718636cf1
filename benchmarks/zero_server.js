#!/usr/bin/env node
// A zero-delay OpenAI-compatible streaming server: the benchmark's stand-in for an engine.
//
// Why Node: one event loop in C (libuv + llhttp) answers tens of thousands of small SSE
// responses per second on one core, so the client under test, not the server, is what the
// benchmark measures. It needs nothing beyond node's standard library.
//
// Protocol (what vLLM's OpenAI server does, minus the model):
//   POST /v1/completions, /v1/chat/completions: `max_tokens` (or `max_completion_tokens`)
//     content chunks, one per token, then a chunk with finish_reason "length", then (with
//     stream_options.include_usage) a usage chunk, then `data: [DONE]`. stream=false: one
//     JSON body with the same usage.
//   GET /v1/models, /health, /version: what clients probe before a run.
// Measurement side channel (not part of the protocol):
//   every request's arrival (headers parsed), first byte written and last byte written are
//   recorded on CLOCK_MONOTONIC in ns (process.hrtime, the clock Python's
//   time.perf_counter_ns reads on Linux), with the last `[[id]]` marker found in the body.
//   GET /_log returns the records as JSON lines and clears them; GET /_reset clears them;
//   GET /_stall: the event loop's own delays since the last reset (GC pauses, write bursts).
//
// Large bodies (over 64 KiB: prompts of tens of thousands of tokens) are not parsed: parsing a
// 130k-token id array takes the event loop 4-18 ms, and every request arriving meanwhile would
// be recorded late. Their scalar fields (max_tokens, stream, include_usage, a marker) are read
// from the first and last 4 KiB, where every client puts them around the prompt, and
// usage.prompt_tokens is estimated from the body's size.
//
// Usage: node zero_server.js --port 8701 [--model zero] [--batch]
//   --batch writes all chunks of a response with one write (the server's ceiling); the
//   default writes one chunk per write, as a real engine streaming tokens does.
'use strict';
const http = require('http');
const {monitorEventLoopDelay} = require('perf_hooks');

const args = process.argv.slice(2);
function opt(name, dflt) {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
}
const PORT = parseInt(opt('--port', '8701'), 10);
const HOST = opt('--host', '127.0.0.1');
const MODEL = opt('--model', 'zero');
const BATCH = args.includes('--batch');
const TOKEN = ' tok';

const hr = process.hrtime.bigint;
const CREATED = Math.floor(Date.now() / 1000);

// Records, in parallel arrays (cheap to append, no per-request object churn).
let recArrive = [], recFirst = [], recEnd = [], recId = [], recTokens = [], recPath = [];
// The server's own stalls (its GC, a burst of writes): how late its event loop ran a 1 ms
// timer. A request arriving during a stall is recorded late whoever sent it, so the
// benchmark reports this beside every tool's lateness.
const loopDelay = monitorEventLoopDelay({resolution: 1});
loopDelay.enable();
function resetLog() {
  recArrive = []; recFirst = []; recEnd = []; recId = []; recTokens = []; recPath = [];
  loopDelay.reset();
}

const MARK = /\[\[([A-Za-z0-9_.:-]+)\]\]/g;
function lastMarker(body) {
  let m, last = '';
  MARK.lastIndex = 0;
  while ((m = MARK.exec(body)) !== null) last = m[1];
  return last;
}

function promptTokens(req) {
  // Not a tokenizer: token-id prompts count exactly, text counts ~4 characters a token.
  if (Array.isArray(req.prompt)) {
    return typeof req.prompt[0] === 'number' ? req.prompt.length : req.prompt.join('').length >> 2;
  }
  if (typeof req.prompt === 'string') return Math.max(1, req.prompt.length >> 2);
  let n = 0;
  if (Array.isArray(req.messages)) {
    for (const m of req.messages) {
      const c = m && m.content;
      if (typeof c === 'string') n += c.length;
      else if (Array.isArray(c)) for (const p of c) if (p && typeof p.text === 'string') n += p.text.length;
    }
  }
  return Math.max(1, n >> 2);
}

function sendJson(res, code, obj) {
  const s = JSON.stringify(obj);
  res.writeHead(code, {'content-type': 'application/json', 'content-length': Buffer.byteLength(s)});
  res.end(s);
}

const BIG = 64 * 1024;
const EDGE = 4096;

function scalars(parts, size) {
  // A large body's head and tail, as latin1 (field names and numbers are ASCII).
  const first = parts[0], last = parts[parts.length - 1];
  const all = first.length >= EDGE && last.length >= EDGE ? null : Buffer.concat(parts, size);
  const head = (all || first).subarray(0, EDGE), tail = all ? all.subarray(size - EDGE) : last.subarray(last.length - EDGE);
  const ends = head.toString('latin1') + ' ' + tail.toString('latin1');
  const num = (k) => { const m = new RegExp('"' + k + '"\\s*:\\s*(\\d+)').exec(ends); return m ? parseInt(m[1], 10) : undefined; };
  const yes = (k) => new RegExp('"' + k + '"\\s*:\\s*true').test(ends);
  return {body: {max_tokens: num('max_tokens'), max_completion_tokens: num('max_completion_tokens'), stream: yes('stream'),
                 stream_options: {include_usage: yes('include_usage')}, model: MODEL},
          marker: lastMarker(ends), promptTokens: Math.max(1, Math.round(size / 5))};
}

function complete(req, res, parts, size, chat, t0) {
  let body, marker, ptoks;
  if (size > BIG) {
    ({body, marker, promptTokens: ptoks} = scalars(parts, size));
  } else {
    const raw = parts.length === 1 ? parts[0].toString() : Buffer.concat(parts).toString();
    try {
      body = JSON.parse(raw);
    } catch (e) {
      sendJson(res, 400, {error: {message: 'body is not JSON: ' + e.message, type: 'BadRequestError', code: 400}});
      return;
    }
    marker = lastMarker(raw);
    ptoks = promptTokens(body);
  }
  let n = body.max_tokens;
  if (n === undefined || n === null) n = body.max_completion_tokens;
  if (n === undefined || n === null) n = 16;
  n = n | 0;
  if (n < 1) {
    sendJson(res, 400, {error: {message: 'max_tokens must be at least 1', type: 'BadRequestError', code: 400}});
    return;
  }
  const idx = recArrive.length;
  recArrive.push(t0);
  recFirst.push(0n);
  recEnd.push(0n);
  recId.push(marker);
  recTokens.push(n);
  recPath.push(chat ? 'chat' : 'cmpl');
  const usage = {prompt_tokens: ptoks, completion_tokens: n, total_tokens: ptoks + n};
  const id = (chat ? 'chatcmpl-' : 'cmpl-') + idx;
  const model = body.model || MODEL;
  // The response is written after the poll phase (setImmediate): every request whose head is
  // readable now gets its arrival stamped first. Written at once, a burst's tenth request would
  // be stamped only after the nine responses before it were written (~0.15 ms each).
  setImmediate(respond, res, body, chat, n, idx, usage, id, model);
}

function respond(res, body, chat, n, idx, usage, id, model) {
  if (!body.stream) {
    const text = TOKEN.repeat(n);
    const choice = chat
      ? {index: 0, message: {role: 'assistant', content: text}, finish_reason: 'length'}
      : {index: 0, text, finish_reason: 'length'};
    recFirst[idx] = hr();
    sendJson(res, 200, {id, object: chat ? 'chat.completion' : 'text_completion', created: CREATED, model, choices: [choice], usage});
    recEnd[idx] = hr();
    return;
  }
  const head = '{"id":"' + id + '","object":"' + (chat ? 'chat.completion.chunk' : 'text_completion') +
    '","created":' + CREATED + ',"model":' + JSON.stringify(model) + ',"choices":[';
  const tokChunk = chat
    ? 'data: ' + head + '{"index":0,"delta":{"content":"' + TOKEN + '"},"finish_reason":null}]}\n\n'
    : 'data: ' + head + '{"index":0,"text":"' + TOKEN + '","finish_reason":null}]}\n\n';
  const finChunk = chat
    ? 'data: ' + head + '{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
    : 'data: ' + head + '{"index":0,"text":"","finish_reason":"length"}]}\n\n';
  const withUsage = !!(body.stream_options && body.stream_options.include_usage);
  const usageChunk = withUsage ? 'data: ' + head + '],"usage":' + JSON.stringify(usage) + '}\n\n' : '';
  res.writeHead(200, {'content-type': 'text/event-stream', 'cache-control': 'no-cache'});
  if (chat) res.write('data: ' + head + '{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n');
  recFirst[idx] = hr();
  if (BATCH) {
    res.end(tokChunk.repeat(n) + finChunk + usageChunk + 'data: [DONE]\n\n');
  } else {
    for (let i = 0; i < n; i++) res.write(tokChunk);
    res.write(finChunk);
    if (withUsage) res.write(usageChunk);
    res.end('data: [DONE]\n\n');
  }
  recEnd[idx] = hr();
}

function dumpLog(res) {
  const lines = [];
  for (let i = 0; i < recArrive.length; i++) {
    lines.push('{"arrive_ns":' + recArrive[i] + ',"first_ns":' + recFirst[i] + ',"end_ns":' + recEnd[i] +
      ',"id":' + JSON.stringify(recId[i]) + ',"max_tokens":' + recTokens[i] + ',"api":"' + recPath[i] + '"}');
  }
  resetLog();
  const s = lines.join('\n') + (lines.length ? '\n' : '');
  res.writeHead(200, {'content-type': 'application/x-ndjson', 'content-length': Buffer.byteLength(s)});
  res.end(s);
}

const server = http.createServer((req, res) => {
  const t0 = hr();
  const url = req.url;
  if (req.method === 'POST' && (url === '/v1/chat/completions' || url === '/v1/completions')) {
    const chat = url === '/v1/chat/completions';
    const parts = [];
    let size = 0;
    req.on('data', (c) => { parts.push(c); size += c.length; });
    req.on('end', () => complete(req, res, parts, size, chat, t0));
    return;
  }
  if (req.method === 'GET') {
    if (url === '/v1/models') return sendJson(res, 200, {object: 'list', data: [{id: MODEL, object: 'model', created: CREATED, owned_by: 'mrw-bench', root: MODEL, max_model_len: 1 << 20}]});
    if (url === '/health') { res.writeHead(200); res.end(); return; }
    if (url === '/version') return sendJson(res, 200, {version: 'zero-server'});
    if (url === '/_log') return dumpLog(res);
    if (url === '/_reset') { resetLog(); res.writeHead(200); res.end(); return; }
    if (url === '/_clock') return sendJson(res, 200, {monotonic_ns: hr().toString()});
    if (url === '/_stall') {
      // Delays beyond the 1 ms sampling timer's own period, in ms.
      const ms = (ns) => Math.max(0, ns / 1e6 - 1);
      return sendJson(res, 200, {samples: loopDelay.count, p50_ms: ms(loopDelay.percentile(50)),
        p99_ms: ms(loopDelay.percentile(99)), max_ms: ms(loopDelay.max)});
    }
  }
  req.resume();
  sendJson(res, 404, {error: {message: 'no route ' + req.method + ' ' + url, type: 'NotFoundError', code: 404}});
});
server.keepAliveTimeout = 120000;
server.headersTimeout = 121000;
server.requestTimeout = 0;
server.maxRequestsPerSocket = 0;
server.on('connection', (s) => s.setNoDelay(true));
server.listen({port: PORT, host: HOST, backlog: 4096}, () => {
  process.stdout.write('zero-server listening on http://' + HOST + ':' + PORT + ' (model ' + MODEL + (BATCH ? ', batch writes' : '') + ')\n');
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { server.close(); process.exit(0); });
