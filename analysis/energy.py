"""Energy windows and attribution, as pure functions over a timeline and per-request records.

Inputs are what a run directory holds: cumulative counters sampled over time (power.csv, see
mrw.replay.meters.base.TIMELINE_COLUMNS), the counters at the run's marks (energy.json) and
one record per request (requests.jsonl: t_issue, t_first_token, t_end, tokens). Every
function here takes plain lists so that tests can build timelines with known answers.

Windows
- baseline: idle before the run; its average power per domain is what "net" subtracts.
- run: from the run's start to its end, energy from the counters read at those two marks.
- steady: ML.ENERGY's steady state, from the moment the engine first holds its full batch
  until the drain begins (the last moment it still holds it). The batch is vLLM's
  num_requests_running where scraped, else the client's in-flight count; "full" is the
  engine's max_num_seqs when known and reached, else the peak concurrency (noted).

Attribution (docs/energy.md says why this weight): each sample interval's energy is split
among the requests in flight in proportion to the tokens each processes in that interval.
A request's input tokens are spread evenly over its prefill span [t_issue, t_first_token]
(times `prefill_weight`, 1 by default), its remaining output tokens over its decode span
(t_first_token, t_end] or placed at their streamed arrival times. Energy of intervals with
no request in flight is reported as unattributed, never spread. Prefill and decode energy
are the parts a request receives during each span.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Iterable, Sequence

import orjson

ENERGY_DOMAINS = ("gpu", "cpu", "dram")  # the ones that add up to "all"; psys/core/uncore overlap them

# ---------------------------------------------------------------------------------- timeline


def _f(x: str) -> float | None:
    if x == "" or x is None:
        return None
    try:
        return float(x)
    except ValueError:
        return None


@dataclass
class Counter:
    """A cumulative counter sampled at increasing times; linear between samples."""

    t: list[float]
    v: list[float]

    def at(self, x: float) -> float | None:
        t = self.t
        if not t or x < t[0] - 1e-9 or x > t[-1] + 1e-9:
            return None
        i = bisect.bisect_right(t, x)
        if i >= len(t):
            return self.v[-1]
        if i == 0:
            return self.v[0]
        t0, t1 = t[i - 1], t[i]
        if t1 == t0:
            return self.v[i]
        return self.v[i - 1] + (self.v[i] - self.v[i - 1]) * (x - t0) / (t1 - t0)

    def delta(self, a: float, b: float) -> float | None:
        va, vb = self.at(a), self.at(b)
        return None if va is None or vb is None else vb - va


def integrate(t: Sequence[float], p: Sequence[float | None], a: float, b: float) -> float | None:
    """Trapezoid integral of samples p(t) over [a, b] (interpolating at the edges); None if the
    samples do not cover [a, b]. Missing values (None) are skipped."""
    pts = [(ti, pi) for ti, pi in zip(t, p) if pi is not None and ti is not None]
    if len(pts) < 2 or a < pts[0][0] - 1e-9 or b > pts[-1][0] + 1e-9 or b < a:
        return None
    ts = [q[0] for q in pts]
    ps = [q[1] for q in pts]

    def val(x: float) -> float:
        i = min(max(bisect.bisect_right(ts, x), 1), len(ts) - 1)
        t0, t1 = ts[i - 1], ts[i]
        return ps[i - 1] if t1 == t0 else ps[i - 1] + (ps[i] - ps[i - 1]) * (x - t0) / (t1 - t0)

    i = bisect.bisect_right(ts, a)  # first sample strictly inside (a, ...)
    j = bisect.bisect_left(ts, b)  # first sample at or after b
    xs = [a] + ts[i:j] + [b]
    ys = [val(a)] + ps[i:j] + [val(b)]
    return sum((xs[k + 1] - xs[k]) * (ys[k] + ys[k + 1]) for k in range(len(xs) - 1)) / 2


@dataclass
class Timeline:
    """power.csv in memory, by (source, device): column -> values (None where empty)."""

    series: dict[tuple[str, str], dict[str, list[float | None]]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> "Timeline":
        tl = cls()
        for r in rows:
            key = (str(r["source"]), str(r.get("device", "")))
            s = tl.series.setdefault(key, {})
            for k, v in r.items():
                if k in ("source", "device"):
                    continue
                s.setdefault(k, []).append(_f(v) if isinstance(v, str) else (None if v is None else float(v)))
            n = len(s["t_s"])
            for col in s.values():  # keep columns aligned when a row lacks one
                if len(col) < n:
                    col.append(None)
        return tl

    @classmethod
    def load(cls, path: str | Path, columns: Iterable[str] | None = None) -> "Timeline":
        """Read power.csv column-wise (fast path for long runs: no per-row dicts); `columns`
        limits which value columns are parsed (t_s always is)."""
        p = Path(path)
        tl = cls()
        if not p.exists():
            return tl
        with open(p, newline="") as f:
            rd = csv.reader(f)
            header = next(rd, None)
            if not header:
                return tl
            i_src, i_dev = header.index("source"), header.index("device")
            want = None if columns is None else {"t_s", *columns}
            cols = [(i, name) for i, name in enumerate(header)
                    if name not in ("source", "device") and (want is None or name in want)]
            raw: dict[tuple[str, str], list[list[str]]] = {}
            for row in rd:
                if len(row) < len(header):
                    continue  # a torn last line
                raw.setdefault((row[i_src], row[i_dev]), []).append(row)
        for key, rows in raw.items():
            s: dict[str, list[float | None]] = {}
            for i, name in cols:
                vals = [r[i] for r in rows]
                if any(vals):
                    s[name] = [float(v) if v else None for v in vals]
            tl.series[key] = s
        return tl

    def devices(self, source: str) -> list[str]:
        return sorted((d for s, d in self.series if s == source), key=lambda d: (len(d), d))

    def counter(self, source: str, device: str, col: str = "energy_j") -> Counter | None:
        s = self.series.get((source, device))
        if not s or col not in s:
            return None
        pts = [(t, v) for t, v in zip(s["t_s"], s[col]) if t is not None and v is not None]
        return Counter([p[0] for p in pts], [p[1] for p in pts]) if pts else None

    def domain_counter(self, source: str, col: str = "energy_j") -> Counter | None:
        """The sum over a source's devices at the instants where all of them were read."""
        devs = self.devices(source)
        if not devs:
            return None
        per = [self.counter(source, d, col) for d in devs]
        if any(c is None for c in per):
            return None
        common = set(per[0].t)  # type: ignore[union-attr]
        for c in per[1:]:
            common &= set(c.t)  # type: ignore[union-attr]
        ts = sorted(common)
        maps = [dict(zip(c.t, c.v)) for c in per]  # type: ignore[union-attr]
        return Counter(ts, [sum(m[t] for m in maps) for t in ts])

    def column(self, source: str, device: str, col: str) -> tuple[list[float], list[float | None]]:
        s = self.series.get((source, device), {})
        return [t for t in s.get("t_s", [])], list(s.get(col, []))


# ---------------------------------------------------------------------------------- requests


@dataclass
class Req:
    """What attribution needs from one request (a requests.jsonl line)."""

    id: str
    workflow: str
    node: str
    t_issue: float | None
    t_first: float | None
    t_end: float | None
    n_in: int
    n_out: int
    token_times: list[float] | None = None
    ok: bool = True

    @classmethod
    def from_record(cls, d: dict[str, Any], shift: float = 0.0) -> "Req":
        def s(x: Any) -> float | None:
            return None if x is None else float(x) + shift

        n_in = d.get("input_tokens")
        if n_in is None:
            n_in = d.get("expected_input_tokens") or 0
        n_out = d.get("output_tokens")
        if n_out is None:
            n_out = d.get("expected_output_tokens") if d.get("ok", True) else 0
        tt = d.get("token_times")
        return cls(
            id=str(d.get("call_id")),
            workflow=str(d.get("workflow_id")),
            node=str(d.get("node")),
            t_issue=s(d.get("t_issue")),
            t_first=s(d.get("t_first_token")),
            t_end=s(d.get("t_end")),
            n_in=int(n_in or 0),
            n_out=int(n_out or 0),
            token_times=[float(x) + shift for x in tt] if tt else None,
            ok=bool(d.get("ok", True)),
        )


@dataclass
class Placement:
    """Where a request's weight lies in time: uniform spans and point masses, by phase."""

    spans: list[tuple[float, float, float, str]]  # (a, b, total weight over [a, b], phase)
    points: list[tuple[float, float, str]]  # (t, weight, phase)
    in_tokens: list[tuple[float, float, float]]  # (a, b, count) input tokens, for window counts
    out_tokens_spans: list[tuple[float, float, float]]
    out_tokens_points: list[tuple[float, float]]


def place(r: Req, weight: str = "tokens", prefill_weight: float = 1.0) -> Placement | None:
    """A request's weight over time (see the module docstring). None if it has no times."""
    if r.t_issue is None or r.t_end is None or r.t_end < r.t_issue:
        return None
    a, e = r.t_issue, r.t_end
    f = r.t_first if r.t_first is not None and a <= r.t_first <= e else None
    spans: list[tuple[float, float, float, str]] = []
    points: list[tuple[float, float, str]] = []
    in_tok = [(a, f if f is not None else e, float(r.n_in))]
    out_sp: list[tuple[float, float, float]] = []
    out_pt: list[tuple[float, float]] = []
    if f is None:  # no first-token time (no streaming): one span, phases unknown
        w = (e - a) if weight == "time" else prefill_weight * r.n_in + r.n_out
        spans.append((a, e, w, "unknown"))
        out_sp.append((a, e, float(r.n_out)))
        return Placement(spans, points, in_tok, out_sp, out_pt)
    # the first output token comes out of the prefill step
    if r.n_out > 0:
        out_pt.append((f, 1.0))
    rest = max(r.n_out - 1, 0)
    tt = [x for x in (r.token_times or []) if f < x <= e]
    if weight == "time":
        spans.append((a, f, f - a, "prefill"))
        spans.append((f, e, e - f, "decode"))
    else:
        spans.append((a, f, prefill_weight * r.n_in + (1.0 if r.n_out > 0 else 0.0), "prefill"))
        if rest and tt:
            per = rest / len(tt)
            points.extend((x, per, "decode") for x in tt)
        elif rest:
            spans.append((f, e, float(rest), "decode"))
    if rest:
        if tt:
            out_pt.extend((x, rest / len(tt)) for x in tt)
        else:
            out_sp.append((f, e, float(rest)))
    return Placement(spans, points, in_tok, out_sp, out_pt)


def _overlap(a: float, b: float, x: float, y: float) -> float:
    return max(0.0, min(b, y) - max(a, x))


def tokens_in_window(placements: Iterable[Placement], a: float, b: float) -> tuple[float, float]:
    """(input, output) tokens processed inside [a, b] by the placements."""
    n_in = n_out = 0.0
    for p in placements:
        for x, y, n in p.in_tokens:
            n_in += n if y == x and a <= x <= b else (n * _overlap(a, b, x, y) / (y - x) if y > x else 0.0)
        for x, y, n in p.out_tokens_spans:
            n_out += n if y == x and a <= x <= b else (n * _overlap(a, b, x, y) / (y - x) if y > x else 0.0)
        for x, n in p.out_tokens_points:
            if a <= x <= b:
                n_out += n
    return n_in, n_out


# ---------------------------------------------------------------------------------- attribution


@dataclass
class Attribution:
    """Energy per request for one domain; gross and net of the idle baseline."""

    domain: str
    per_request: dict[str, dict[str, float]]  # id -> {gross, net, prefill, decode, unknown}
    total_j: float  # energy over the grid
    attributed_j: float
    unattributed_j: float  # intervals with no request in flight
    total_net_j: float
    unattributed_net_j: float
    outside_j: float = 0.0  # weight of requests outside the grid (no energy data there)
    notes: list[str] = field(default_factory=list)


def attribute(
    counter: Counter,
    reqs: Sequence[Req],
    *,
    domain: str = "gpu",
    weight: str = "tokens",
    prefill_weight: float = 1.0,
    idle_power_w: float = 0.0,
    window: tuple[float, float] | None = None,
) -> Attribution:
    """Split each sample interval's energy among the requests in flight (module docstring)."""
    if weight not in ("tokens", "time"):
        raise ValueError(f"weight must be 'tokens' or 'time', not {weight!r}")
    t, v = counter.t, counter.v
    if window is not None:
        lo, hi = window
        keep = [i for i, x in enumerate(t) if lo - 1e-9 <= x <= hi + 1e-9]
        t, v = [t[i] for i in keep], [v[i] for i in keep]
    K = len(t) - 1
    notes: list[str] = []
    if K < 1:
        return Attribution(domain, {}, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, ["fewer than two samples: nothing to attribute"])
    dE = [v[k + 1] - v[k] for k in range(K)]
    dT = [t[k + 1] - t[k] for k in range(K)]
    dN = [dE[k] - idle_power_w * dT[k] for k in range(K)]
    W = [0.0] * K
    dens = [0.0] * (K + 1)
    pl: dict[str, Placement] = {}
    outside = 0.0
    skipped = 0

    def locate(x: float) -> int:
        return min(max(bisect.bisect_right(t, x) - 1, 0), K - 1)

    spans_all: list[tuple[str, float, float, float, str]] = []  # (id, a, b, density, phase)
    points_all: list[tuple[str, int, float, str]] = []
    for r in reqs:
        p = place(r, weight, prefill_weight)
        if p is None:
            skipped += 1
            continue
        pl[r.id] = p
        for a, b, w, ph in p.spans:
            if w <= 0:
                continue
            if b <= a:  # a zero-length span is a point mass
                if t[0] <= a <= t[-1]:
                    k = locate(a)
                    W[k] += w
                    points_all.append((r.id, k, w, ph))
                else:
                    outside += w
                continue
            rho = w / (b - a)
            ca, cb = max(a, t[0]), min(b, t[-1])
            outside += w - rho * max(0.0, cb - ca)
            if cb <= ca:
                continue
            i, j = locate(ca), locate(cb)
            if cb == t[j] and j > i:
                j -= 1  # ends exactly on a sample: the last interval is j-1
            if i == j:
                W[i] += rho * (cb - ca)
            else:
                W[i] += rho * (t[i + 1] - ca)
                W[j] += rho * (cb - t[j])
                dens[i + 1] += rho
                dens[j] -= rho
            spans_all.append((r.id, ca, cb, rho, ph))
        for x, w, ph in p.points:
            if t[0] <= x <= t[-1]:
                k = locate(x)
                W[k] += w
                points_all.append((r.id, k, w, ph))
            else:
                outside += w
    run = 0.0
    for k in range(K):
        run += dens[k]
        W[k] += run * dT[k]
    g = [dE[k] / W[k] if W[k] > 1e-12 else 0.0 for k in range(K)]
    gn = [dN[k] / W[k] if W[k] > 1e-12 else 0.0 for k in range(K)]
    G = [0.0] + list(accumulate(g[k] * dT[k] for k in range(K)))
    GN = [0.0] + list(accumulate(gn[k] * dT[k] for k in range(K)))
    out: dict[str, dict[str, float]] = {r_id: {"gross": 0.0, "net": 0.0, "prefill": 0.0, "decode": 0.0, "unknown": 0.0} for r_id in pl}

    def add(r_id: str, ph: str, e: float, en: float) -> None:
        d = out[r_id]
        d["gross"] += e
        d["net"] += en
        d[ph] += e

    for r_id, ca, cb, rho, ph in spans_all:
        i, j = locate(ca), locate(cb)
        if cb == t[j] and j > i:
            j -= 1
        if i == j:
            add(r_id, ph, rho * (cb - ca) * g[i], rho * (cb - ca) * gn[i])
        else:
            e = rho * ((t[i + 1] - ca) * g[i] + (cb - t[j]) * g[j] + (G[j] - G[i + 1]))
            en = rho * ((t[i + 1] - ca) * gn[i] + (cb - t[j]) * gn[j] + (GN[j] - GN[i + 1]))
            add(r_id, ph, e, en)
    for r_id, k, w, ph in points_all:
        add(r_id, ph, w * g[k], w * gn[k])
    total = sum(dE)
    un = sum(dE[k] for k in range(K) if W[k] <= 1e-12)
    un_net = sum(dN[k] for k in range(K) if W[k] <= 1e-12)
    attributed = sum(d["gross"] for d in out.values())
    if skipped:
        notes.append(f"{skipped} request(s) without issue/end times were not attributed")
    if outside > 1e-9:
        notes.append("some requests lie partly outside the sampled timeline; their share there has no energy data")
    return Attribution(domain, out, total, attributed, un, sum(dN), un_net, outside, notes)


def group(attr: Attribution, reqs: Sequence[Req], key: str) -> dict[str, dict[str, float]]:
    """Sum per-request energies by 'node' (stage) or 'workflow', with token counts."""
    out: dict[str, dict[str, float]] = {}
    for r in reqs:
        e = attr.per_request.get(r.id)
        if e is None:
            continue
        k = getattr(r, key)
        d = out.setdefault(k, {"requests": 0, "gross_j": 0.0, "net_j": 0.0, "prefill_j": 0.0, "decode_j": 0.0,
                               "input_tokens": 0, "output_tokens": 0})
        d["requests"] += 1
        d["gross_j"] += e["gross"]
        d["net_j"] += e["net"]
        d["prefill_j"] += e["prefill"]
        d["decode_j"] += e["decode"]
        d["input_tokens"] += r.n_in
        d["output_tokens"] += r.n_out
    for d in out.values():
        d["j_per_output_token"] = d["gross_j"] / d["output_tokens"] if d["output_tokens"] else None
        d["j_per_request"] = d["gross_j"] / d["requests"] if d["requests"] else None
    return out


# ---------------------------------------------------------------------------------- steady state


def inflight_steps(reqs: Sequence[Req]) -> list[tuple[float, int]]:
    """The client's in-flight count as a step function [(t, n from t on)], from issue/end times."""
    ev: list[tuple[float, int]] = []
    for r in reqs:
        if r.t_issue is None or r.t_end is None:
            continue
        ev.append((r.t_issue, +1))
        ev.append((r.t_end, -1))
    ev.sort(key=lambda x: (x[0], x[1]))  # ends before starts at the same instant
    out: list[tuple[float, int]] = []
    n = 0
    for t, d in ev:
        n += d
        if out and out[-1][0] == t:
            out[-1] = (t, n)
        else:
            out.append((t, n))
    return out


@dataclass
class SteadyWindow:
    start: float
    end: float
    full_batch: int
    basis: str  # "vllm:num_requests_running" | "client in-flight"
    full_fraction: float  # share of the window's time spent at the full batch
    notes: list[str] = field(default_factory=list)


def steady_window(steps: Sequence[tuple[float, float]], *, max_num_seqs: int | None = None,
                  sampled: bool = False, basis: str = "client in-flight") -> tuple[SteadyWindow | None, str | None]:
    """From the first moment the batch is full until the drain begins (the last moment it is full).

    `steps`: [(t, n)] with n held from t to the next t. `sampled`: the values are scrape
    samples (e.g. vLLM /metrics), so the window ends at the last sample that saw the batch full
    rather than at the (unobserved) moment it dropped. Returns (window, None) or (None, reason).
    """
    if not steps:
        return None, "no concurrency data (no requests with times, no metrics timeline)"
    peak = max(n for _, n in steps)
    notes: list[str] = []
    if peak <= 0:
        return None, "no request was ever in flight"
    if max_num_seqs is not None and peak >= max_num_seqs:
        full = max_num_seqs
    else:
        full = int(peak)
        if max_num_seqs is not None:
            notes.append(f"the batch never reached max_num_seqs={max_num_seqs}; 'full' is the peak concurrency {full}")
        else:
            notes.append(f"engine batch limit unknown; 'full' is the peak concurrency {full}")
    idx = [i for i, (_, n) in enumerate(steps) if n >= full]
    start = steps[idx[0]][0]
    last = idx[-1]
    if sampled or last + 1 >= len(steps):
        end = steps[last][0]
    else:
        end = steps[last + 1][0]
    if end <= start:
        return None, f"the batch was full ({full}) only for an instant: no steady state"
    at_full = 0.0
    for i, (t, n) in enumerate(steps):
        t_next = steps[i + 1][0] if i + 1 < len(steps) else end
        if n >= full:
            at_full += _overlap(start, end, t, t_next)
    return SteadyWindow(start, end, full, basis, at_full / (end - start), notes), None


# ---------------------------------------------------------------------------------- cross-check


def cross_check(tl: Timeline, a: float, b: float, cap_w: float | None = None) -> dict[str, Any]:
    """Per GPU: the energy counter over [a, b] against integrated power (each NVML flavour)."""
    out: dict[str, Any] = {}
    for dev in tl.devices("gpu"):
        c = tl.counter("gpu", dev)
        if c is None or not c.t:
            continue
        lo, hi = max(a, c.t[0]), min(b, c.t[-1])
        if hi <= lo:
            continue
        d: dict[str, Any] = {"window_s": [lo, hi], "counter_j": c.delta(lo, hi)}
        t = tl.series[("gpu", dev)]["t_s"]
        for col, name in (("power_w", "power_usage"), ("power_instant_w", "power_instant"), ("power_avg_w", "power_average")):
            p = tl.series[("gpu", dev)].get(col)
            if not p or all(x is None for x in p):
                continue
            e = integrate(t, p, lo, hi)  # type: ignore[arg-type]
            if e is None:
                continue
            entry: dict[str, Any] = {"integrated_j": e}
            if d["counter_j"]:
                entry["rel_diff"] = (e - d["counter_j"]) / d["counter_j"]
            vals = [x for x, ti in zip(p, t) if x is not None and ti is not None and lo <= ti <= hi]
            if vals:
                entry["max_w"] = max(vals)
                entry["mean_w"] = sum(vals) / len(vals)
                if cap_w is not None:
                    entry["samples_above_cap"] = sum(1 for x in vals if x > cap_w) / len(vals)
            d[name] = entry
        out[dev] = d
    return out


# ---------------------------------------------------------------------------------- run directory


def _read_jsonl(p: Path) -> list[dict[str, Any]]:
    if not p.exists():
        return []
    out = []
    for line in p.read_bytes().splitlines():
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a torn last line from a crash
    return out


def _per_token(e: float | None, n_in: float, n_out: float) -> dict[str, float | None]:
    if e is None:
        return {"j_per_input_token": None, "j_per_output_token": None, "j_per_token": None}
    return {
        "j_per_input_token": e / n_in if n_in else None,
        "j_per_output_token": e / n_out if n_out else None,
        "j_per_token": e / (n_in + n_out) if n_in + n_out else None,
    }


def _window_summary(energy: dict[str, float], idle: dict[str, float], dur: float, n_in: float, n_out: float) -> dict[str, Any]:
    doms = {k: v for k, v in energy.items() if k in ENERGY_DOMAINS}
    out: dict[str, Any] = {"duration_s": dur, "input_tokens": n_in, "output_tokens": n_out, "domains": {}}
    for k, e in doms.items():
        net = e - idle[k] * dur if k in idle else None
        out["domains"][k] = {
            "gross_j": e,
            "net_j": net,
            "avg_power_w": e / dur if dur > 0 else None,
            **_per_token(e, n_in, n_out),
            "net": _per_token(net, n_in, n_out),
        }
    if doms:
        tot = sum(doms.values())
        net_all = tot - sum(idle.get(k, 0.0) for k in doms) * dur if all(k in idle for k in doms) else None
        out["all"] = {"domains": sorted(doms), "gross_j": tot, "net_j": net_all,
                      "avg_power_w": tot / dur if dur > 0 else None, **_per_token(tot, n_in, n_out)}
    return out


def _max_num_seqs(run: dict[str, Any]) -> int | None:
    for path in (("engine", "max_num_seqs"), ("knobs", "max_num_seqs"), ("engine_args", "max_num_seqs"), ("max_num_seqs",)):
        d: Any = run
        for k in path:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, int):
            return d
    return None


def _metrics_steps(run_dir: Path, shift: float) -> list[tuple[float, float]]:
    """vLLM's num_requests_running from a metrics timeline, if the run has one."""
    for name in ("metrics.jsonl", "engine_metrics.jsonl"):
        rows = _read_jsonl(run_dir / name)
        steps = []
        for r in rows:
            t = r.get("t_s", r.get("t"))
            n = r.get("num_requests_running", r.get("vllm:num_requests_running"))
            if t is not None and n is not None:
                steps.append((float(t) + shift, float(n)))
        if steps:
            return sorted(steps)
    return []


METHOD = {
    "energy": "counter differences: NVML nvmlDeviceGetTotalEnergyConsumption per GPU, RAPL energy_uj per domain "
    "(wraparound corrected); read at the run's marks, and interpolated from the timeline for inner windows",
    "net": "gross minus the idle baseline's average power (per domain) times the window's duration",
    "steady_state": "from the first moment the engine holds its full batch (max_num_seqs, else the peak concurrency) "
    "to the last moment it still does (ML.ENERGY); batch from vLLM num_requests_running, else client in-flight",
    "attribution": "each sample interval's energy split among requests in flight in proportion to tokens processed "
    "in it: input tokens spread over [t_issue, t_first_token] (x prefill_weight), output tokens over "
    "(t_first_token, t_end] or at streamed arrival times; intervals with nothing in flight stay unattributed",
    "cross_check": "per GPU, counter energy vs trapezoid-integrated power samples over the same span",
}


def _with_marks(c: Counter | None, tl: Timeline, dom: str, marks: dict[str, Any]) -> Counter | None:
    """A domain's timeline counter plus the readings the meters took at the run's start and end
    marks. The sampler's last row can precede the end mark by up to a period (and a stall,
    such as a GC pass holding the GIL, can leave a gap after the start): without the marks, a
    request that finishes after the last row would be attributed nothing."""
    if c is None:
        return None
    devs = tl.devices(dom)
    pts = dict(zip(c.t, c.v))
    for name in ("run_start", "run_end"):
        m = marks.get(name) or {}
        cs = m.get("counters") or {}
        vals = [cs.get(f"{dom}:{d}") for d in devs]
        if isinstance(m.get("t_s"), (int, float)) and devs and all(isinstance(v, (int, float)) for v in vals):
            pts.setdefault(float(m["t_s"]), float(sum(vals)))  # type: ignore[arg-type]
    ts = sorted(pts)
    return Counter(ts, [pts[t] for t in ts])


def finalize(run_dir: str | Path, *, weight: str = "tokens", prefill_weight: float = 1.0,
             max_num_seqs: int | None = None, write: bool = True) -> dict[str, Any]:
    """Add windows, cross-check and attribution to run_dir/energy.json (and write
    energy_requests.jsonl). Idempotent; works with any subset of sources available."""
    from mrw.trace import write_atomic

    rd = Path(run_dir)
    doc = orjson.loads((rd / "energy.json").read_bytes())
    run_meta: dict[str, Any] = {}
    if (rd / "run.json").exists():
        try:
            run_meta = orjson.loads((rd / "run.json").read_bytes())
        except orjson.JSONDecodeError:
            run_meta = {}
    # align request times with the meters' clock when the replay used another origin
    shift = 0.0
    t0r, t0m = (run_meta.get("clock") or {}).get("t0_perf_counter"), doc.get("t0_perf_counter")
    if isinstance(t0r, (int, float)) and isinstance(t0m, (int, float)):
        shift = t0r - t0m
    reqs = [Req.from_record(d, shift) for d in _read_jsonl(rd / "requests.jsonl")]
    tl = (Timeline.load(rd / doc["timeline_file"], columns=("energy_j", "power_w", "power_instant_w", "power_avg_w"))
          if doc.get("timeline_file") else Timeline())
    notes: list[str] = []

    base = doc.get("baseline") or {}
    idle = {k: v for k, v in (base.get("avg_power_w") or {}).items() if k in ENERGY_DOMAINS}
    if not base:
        notes.append("no idle baseline measured: net energy not available")
    run = doc.get("run") or {}
    T = run.get("duration_s", 0.0)
    placements = [p for r in reqs if (p := place(r, weight, prefill_weight)) is not None]
    n_in_run = sum(r.n_in for r in reqs)
    n_out_run = sum(r.n_out for r in reqs)
    windows: dict[str, Any] = {
        "run": {"start_s": 0.0, "end_s": T, "requests": len(reqs), "requests_ok": sum(r.ok for r in reqs),
                **_window_summary(run.get("energy_j") or {}, idle, T, n_in_run, n_out_run)},
    }
    if base:
        windows["baseline"] = {"start_s": base.get("start_s"), "duration_s": base.get("duration_s"),
                               "avg_power_w": idle, "energy_j": {k: v for k, v in (base.get("energy_j") or {}).items()}}
    if (rd / "knobs.json").exists():
        try:
            doc["knobs"] = orjson.loads((rd / "knobs.json").read_bytes())
        except orjson.JSONDecodeError:
            notes.append("knobs.json is unreadable")
    # steady state
    mns = max_num_seqs if max_num_seqs is not None else _max_num_seqs(run_meta)
    msteps = _metrics_steps(rd, shift)
    if msteps:
        sw, why = steady_window(msteps, max_num_seqs=mns, sampled=True, basis="vllm:num_requests_running")
    else:
        sw, why = steady_window(inflight_steps(reqs), max_num_seqs=mns, sampled=False, basis="client in-flight")
    if sw is None:
        windows["steady"] = {"available": False, "reason": why}
    else:
        energy_sw: dict[str, float] = {}
        for dom in ENERGY_DOMAINS:
            c = tl.domain_counter(dom)
            if c is not None and (e := c.delta(sw.start, sw.end)) is not None:
                energy_sw[dom] = e
        n_in, n_out = tokens_in_window(placements, sw.start, sw.end)
        windows["steady"] = {
            "available": True, "start_s": sw.start, "end_s": sw.end, "full_batch": sw.full_batch,
            "basis": sw.basis, "full_fraction": sw.full_fraction, "notes": sw.notes,
            **_window_summary(energy_sw, idle, sw.end - sw.start, n_in, n_out),
        }
    # cross-check and attribution
    cap = (doc.get("knobs") or {}).get("cap_w_requested")
    xc = cross_check(tl, 0.0, T, cap)
    attribution: dict[str, Any] = {"weight": weight, "prefill_weight": prefill_weight, "domains": {}}
    per_req: dict[str, dict[str, Any]] = {r.id: {"call_id": r.id, "workflow_id": r.workflow, "node": r.node,
                                                  "input_tokens": r.n_in, "output_tokens": r.n_out} for r in reqs}
    per_wf: dict[str, dict[str, Any]] = {}
    for dom in ENERGY_DOMAINS:
        c = _with_marks(tl.domain_counter(dom), tl, dom, doc.get("marks") or {})
        if c is None or len(c.t) < 2 or not reqs:
            continue
        at = attribute(c, reqs, domain=dom, weight=weight, prefill_weight=prefill_weight,
                       idle_power_w=idle.get(dom, 0.0), window=(0.0, T))
        for rid, e in at.per_request.items():
            per_req[rid][f"{dom}_j"] = e["gross"]
            per_req[rid][f"{dom}_net_j"] = e["net"]
            per_req[rid][f"{dom}_prefill_j"] = e["prefill"] if e["unknown"] == 0 else None
            per_req[rid][f"{dom}_decode_j"] = e["decode"] if e["unknown"] == 0 else None
        wf = group(at, reqs, "workflow")
        for k, v in wf.items():
            d = per_wf.setdefault(k, {"requests": v["requests"], "input_tokens": v["input_tokens"], "output_tokens": v["output_tokens"]})
            d.update({f"{dom}_j": v["gross_j"], f"{dom}_net_j": v["net_j"], f"{dom}_prefill_j": v["prefill_j"],
                      f"{dom}_decode_j": v["decode_j"], f"{dom}_j_per_output_token": v["j_per_output_token"]})
        attribution["domains"][dom] = {
            "total_j": at.total_j, "attributed_j": at.attributed_j, "unattributed_j": at.unattributed_j,
            "total_net_j": at.total_net_j, "unattributed_net_j": at.unattributed_net_j,
            "prefill_j": sum(e["prefill"] for e in at.per_request.values()),
            "decode_j": sum(e["decode"] for e in at.per_request.values()),
            "phase_unknown_j": sum(e["unknown"] for e in at.per_request.values()),
            "per_stage": group(at, reqs, "node"),
            "per_workflow_summary": _dist([d["gross_j"] for d in wf.values()]),
            "per_request_summary": _dist([e["gross"] for e in at.per_request.values()]),
            "notes": at.notes,
        }
    if not attribution["domains"]:
        attribution["available"] = False
        attribution["reason"] = "no energy timeline (no GPU/RAPL source available)" if reqs else "no requests"
    # CPU time shares: the harness's part of the machine's busy CPU time
    cpu = run.get("cpu_s") or {}
    if cpu.get("system_cpu"):
        shares = {"harness_cpu_s": cpu.get("harness_cpu"), "engine_cpu_s": cpu.get("engine_cpu"),
                  "system_busy_cpu_s": cpu.get("system_cpu")}
        shares["harness_share"] = (cpu.get("harness_cpu") or 0.0) / cpu["system_cpu"]
        if cpu.get("engine_cpu") is not None:
            shares["engine_share"] = cpu["engine_cpu"] / cpu["system_cpu"]
        if "cpu" in (run.get("energy_j") or {}):
            shares["harness_cpu_energy_j_by_time_share"] = shares["harness_share"] * run["energy_j"]["cpu"]
        windows["run"]["cpu_time"] = shares
    doc["summary"] = headline(windows, xc, attribution)
    doc["method"] = METHOD
    doc["windows"] = windows
    doc["cross_check"] = xc
    doc["attribution"] = attribution
    doc["analysis_notes"] = notes
    if write:
        write_atomic(rd / "energy.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        if reqs:
            write_atomic(rd / "energy_requests.jsonl", b"".join(orjson.dumps(v) + b"\n" for v in per_req.values()))
        if per_wf:
            write_atomic(rd / "energy_workflows.jsonl", b"".join(orjson.dumps({"workflow_id": k, **v}) + b"\n" for k, v in per_wf.items()))
    return doc


def headline(windows: dict[str, Any], xc: dict[str, Any], attribution: dict[str, Any]) -> dict[str, Any]:
    """Scalar figures for tables (`mrw analyze`): energy, power and J/token of the run and the
    steady window per measured domain, the idle baseline, and the worst counter/timeline gap."""
    h: dict[str, Any] = {}
    run = windows.get("run") or {}
    for dom, d in (run.get("domains") or {}).items():
        h[f"{dom}_energy_j"] = d["gross_j"]
        h[f"{dom}_net_energy_j"] = d.get("net_j")
        h[f"{dom}_avg_power_w"] = d.get("avg_power_w")
        h[f"{dom}_j_per_output_token"] = d.get("j_per_output_token")
        h[f"{dom}_j_per_token"] = d.get("j_per_token")
    if "all" in run:
        h["energy_j"] = run["all"]["gross_j"]
        h["j_per_output_token"] = run["all"].get("j_per_output_token")
    for dom, w in ((windows.get("baseline") or {}).get("avg_power_w") or {}).items():
        h[f"idle_{dom}_power_w"] = w
    st = windows.get("steady") or {}
    if st.get("available"):
        h["steady_s"] = st["end_s"] - st["start_s"]
        for dom, d in (st.get("domains") or {}).items():
            h[f"steady_{dom}_avg_power_w"] = d.get("avg_power_w")
            h[f"steady_{dom}_j_per_output_token"] = d.get("j_per_output_token")
    gaps = [abs(d[k]["rel_diff"]) for d in xc.values() for k in ("power_instant",) if k in d and "rel_diff" in d[k]]
    if gaps:
        h["counter_vs_instant_power_max_rel_diff"] = max(gaps)
    g = (attribution.get("domains") or {}).get("gpu")
    if g:
        h["gpu_prefill_j"] = g["prefill_j"]
        h["gpu_decode_j"] = g["decode_j"]
    return {k: v for k, v in h.items() if v is not None}


def _dist(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    s = sorted(xs)
    n = len(s)
    return {"count": n, "sum": sum(s), "mean": sum(s) / n, "p50": s[n // 2], "p90": s[min(n - 1, math.ceil(0.9 * n) - 1)], "max": s[-1]}


# ---------------------------------------------------------------------------------- report


def _j(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1000:,.2f} kJ" if abs(x) >= 10_000 else f"{x:,.1f} J"


def _w(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f} W"


def summary_lines(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines a person reads first: sources, baseline, run, steady, cross-check."""
    out: list[tuple[str, str]] = [("status", str(doc.get("status")))]
    for name, s in (doc.get("sources") or {}).items():
        out.append((f"source {name}", "measured" if s.get("available") else f"unavailable: {s.get('reason')}"))
    gpus = (doc.get("devices") or {}).get("nvml", {}).get("gpus") or []
    for g in gpus:
        pl = g.get("power_limit_w") or {}
        out.append((f"gpu {g['index']}", f"{g['name']} (limit {_w(pl.get('enforced') or pl.get('current'))}, "
                                          f"range {_w(pl.get('min'))}..{_w(pl.get('max'))})"))
    for g in (doc.get("knobs") or {}).get("gpus") or []:
        if g.get("cap_requested_w") is not None:
            out.append((f"cap gpu {g['index']}", f"asked {_w(g['cap_requested_w'])}, effective {_w(g.get('cap_effective_w'))}, "
                                                 f"enforced {_w(g.get('cap_enforced_w'))}, restored {g.get('restored')}"))
        if g.get("clocks_requested_mhz"):
            out.append((f"clocks gpu {g['index']}", f"locked {g['clocks_requested_mhz']} MHz, restored {g.get('restored')}"))
    win = doc.get("windows") or {}
    base = win.get("baseline")
    if base:
        out.append(("idle baseline", f"{base.get('duration_s', 0):.1f} s: " +
                    (", ".join(f"{k} {_w(v)}" for k, v in (base.get("avg_power_w") or {}).items()) or "no energy source")))
    for wname in ("run", "steady"):
        w = win.get(wname)
        if not w:
            continue
        if w.get("available") is False:
            out.append((f"{wname} window", f"none: {w.get('reason')}"))
            continue
        head = f"{w.get('duration_s', 0):.2f} s, {w.get('input_tokens', 0):,.0f} in / {w.get('output_tokens', 0):,.0f} out tokens"
        if wname == "steady":
            head += f", batch {w.get('full_batch')} ({w.get('basis')}, full {100 * w.get('full_fraction', 0):.0f}% of it)"
        out.append((f"{wname} window", head))
        for dom, d in (w.get("domains") or {}).items():
            jt = d.get("j_per_output_token")
            out.append((f"  {dom}", f"{_j(d['gross_j'])} gross, {_j(d.get('net_j'))} net, {_w(d.get('avg_power_w'))} avg"
                                    + (f", {jt:.4g} J/output token" if jt is not None else "")))
        if not w.get("domains"):
            out.append(("  energy", "not measured (no GPU/CPU energy source available)"))
        ct = w.get("cpu_time")
        if ct:
            eng = ct.get("engine_cpu_s")
            out.append(("  cpu time", f"harness {ct.get('harness_cpu_s') or 0:.2f} s ({100 * ct['harness_share']:.1f}% of busy), "
                                      + (f"engine {eng:.2f} s ({100 * ct['engine_share']:.1f}%), " if eng is not None else "engine not known, ")
                                      + f"machine busy {ct['system_busy_cpu_s']:.2f} s"))
    for dev, d in (doc.get("cross_check") or {}).items():
        parts = [f"counter {_j(d.get('counter_j'))}"]
        for k in ("power_instant", "power_usage", "power_average"):
            if k in d and "rel_diff" in d[k]:
                parts.append(f"{k} {100 * d[k]['rel_diff']:+.2f}%")
        out.append((f"cross-check gpu {dev}", ", ".join(parts)))
    att = (doc.get("attribution") or {}).get("domains") or {}
    for dom, a in att.items():
        out.append((f"attributed {dom}", f"{_j(a['attributed_j'])} to requests (prefill {_j(a['prefill_j'])}, decode "
                                         f"{_j(a['decode_j'])}), {_j(a['unattributed_j'])} with nothing in flight"))
    for n in doc.get("notes") or []:
        out.append(("note", n))
    return out


# ---------------------------------------------------------------------------------- figure


def plot_power(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Power timeline figure: GPU power (instant and NVML's 1 s average) per GPU with the cap,
    CPU/DRAM power, SM clock, and requests in flight, with the baseline and steady windows
    shaded. Returns the PNG path, or None when the run has no timeline. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rd = Path(run_dir)
    doc = orjson.loads((rd / "energy.json").read_bytes())
    tl = Timeline.load(rd / (doc.get("timeline_file") or "power.csv"))
    if not any(src in ENERGY_DOMAINS for src, _ in tl.series):
        return None  # nothing measured power (CPU time only): no power figure
    reqs = [Req.from_record(d) for d in _read_jsonl(rd / "requests.jsonl")]
    gpus = tl.devices("gpu")
    panels = 1 + bool(gpus) + bool(reqs)
    fig, axes = plt.subplots(panels, 1, figsize=(11, 2.6 * panels + 0.6), sharex=True, squeeze=False)
    axes = [a[0] for a in axes]
    ax = axes[0]
    for dev in gpus:
        for col, style, lab in (("power_instant_w", "-", "instant"), ("power_w", "--", "1 s avg (PowerUsage)")):
            t, p = tl.column("gpu", dev, col)
            pts = [(a, b) for a, b in zip(t, p) if a is not None and b is not None]
            if pts:
                ax.plot([q[0] for q in pts], [q[1] for q in pts], style, lw=1, label=f"GPU {dev} {lab}")
    for dom in ("cpu", "dram"):
        for dev in tl.devices(dom):
            t, p = tl.column(dom, dev, "power_w")
            pts = [(a, b) for a, b in zip(t, p) if a is not None and b is not None]
            if pts:
                ax.plot([q[0] for q in pts], [q[1] for q in pts], ":", lw=1, label=f"{dom} {dev}")
    cap = ((doc.get("knobs") or {}).get("cap_w_requested"))
    if cap:
        ax.axhline(cap, color="red", lw=0.8, ls="-.", label=f"cap {cap:g} W")
    ax.set_ylabel("power (W)")
    win = doc.get("windows") or {}
    for a in axes:
        if (b := win.get("baseline")) and b.get("start_s") is not None:
            a.axvspan(b["start_s"], 0, color="grey", alpha=0.12, lw=0)
        if (s := win.get("steady")) and s.get("available"):
            a.axvspan(s["start_s"], s["end_s"], color="tab:green", alpha=0.08, lw=0)
    k = 1
    if gpus:
        axc = axes[k]
        k += 1
        for dev in gpus:
            t, c = tl.column("gpu", dev, "sm_clock_mhz")
            pts = [(a, b) for a, b in zip(t, c) if a is not None and b is not None]
            if pts:
                axc.plot([q[0] for q in pts], [q[1] for q in pts], lw=1, label=f"GPU {dev} SM clock")
            t, ev = tl.column("gpu", dev, "clock_events")
            capped = [a for a, b in zip(t, ev) if a is not None and b is not None and int(b) & 0x4]
            if capped:
                axc.plot(capped, [0] * len(capped), "|", color="red", ms=8, label=f"GPU {dev} power-capped")
        axc.set_ylabel("SM clock (MHz)")
        axc.legend(loc="upper right", fontsize=7)
    if reqs:
        axr = axes[k]
        st = inflight_steps(reqs)
        if st:
            axr.step([s[0] for s in st], [s[1] for s in st], where="post", lw=1, label="requests in flight (client)")
        ms = _metrics_steps(rd, 0.0)
        if ms:
            axr.step([s[0] for s in ms], [s[1] for s in ms], where="post", lw=1, label="vLLM num_requests_running")
        axr.set_ylabel("requests")
        axr.legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("seconds since run start (grey: idle baseline, green: steady state)")
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    gpu_names = {g.get("name") for g in (doc.get("devices") or {}).get("nvml", {}).get("gpus", [])}
    fig.suptitle(f"{rd.name}: power timeline" + (f" ({', '.join(sorted(n for n in gpu_names if n))})" if gpu_names else ""), fontsize=10)
    fig.tight_layout()
    path = Path(out) if out else rd / "power.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def energy_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows for `mrw analyze` tables; the same keys for every run so that runs
    compare side by side (uncapped vs capped). Sources that did not measure say why."""
    rows: list[tuple[str, str]] = []
    src = doc.get("sources") or {}
    off = [f"{k} ({_short_reason(v.get('reason'))})" for k, v in src.items() if not v.get("available")]
    on = [k for k, v in src.items() if v.get("available")]
    rows.append(("energy sources", ", ".join(on) + (f"; unavailable: {', '.join(off)}" if off else "") if src else "none"))
    caps = [g for g in (doc.get("knobs") or {}).get("gpus") or [] if g.get("cap_requested_w") is not None]
    if caps:
        rows.append(("power cap W (effective, restored)", ", ".join(
            f"{g.get('cap_effective_w'):g} ({'yes' if g.get('restored') else g.get('restored')})" for g in caps)))
    win = doc.get("windows") or {}
    run, st = win.get("run") or {}, win.get("steady") or {}
    idle = (win.get("baseline") or {}).get("avg_power_w") or {}
    doms = [d for d in ENERGY_DOMAINS if d in (run.get("domains") or {})]
    if not doms:
        rows.append(("energy", "not measured (no GPU/CPU energy source here)"))
    for d in doms:
        r = run["domains"][d]
        up = d.upper()
        rows.append((f"{up} energy kJ gross / net", f"{r['gross_j'] / 1000:,.3f} / " + (f"{r['net_j'] / 1000:,.3f}" if r.get("net_j") is not None else "-")))
        rows.append((f"{up} power W avg / idle", f"{_num(r.get('avg_power_w'))} / {_num(idle.get(d))}"))
        sd = (st.get("domains") or {}).get(d) or {}
        rows.append((f"{up} J per output token run / steady", f"{_num(r.get('j_per_output_token'), 4)} / {_num(sd.get('j_per_output_token'), 4)}"))
    if st:
        rows.append(("steady window", f"{st['start_s']:.1f}-{st['end_s']:.1f} s, batch {st['full_batch']} ({st['basis']})"
                     if st.get("available") else f"none ({st.get('reason')})"))
    g = ((doc.get("attribution") or {}).get("domains") or {}).get("gpu")
    if g:
        rows.append(("GPU J prefill / decode / idle gaps", f"{g['prefill_j']:,.1f} / {g['decode_j']:,.1f} / {g['unattributed_j']:,.1f}"))
    xc = doc.get("cross_check") or {}
    gaps = [f"{100 * d['power_instant']['rel_diff']:+.2f}%" for d in xc.values() if "rel_diff" in d.get("power_instant", {})]
    if gaps:
        rows.append(("counter vs integrated instant power", ", ".join(gaps)))
    ct = run.get("cpu_time")
    if ct:
        rows.append(("harness / engine share of busy CPU", f"{100 * ct['harness_share']:.1f}% / "
                     + (f"{100 * ct['engine_share']:.1f}%" if "engine_share" in ct else "-")))
    return rows


def _num(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _short_reason(r: str | None) -> str:
    if not r:
        return "?"
    r = r.split(": ", 1)[1] if ": " in r else r
    return r.split(" (")[0][:60]
