#!/usr/bin/env python3
"""Turns one measurement of scripts/bench-load into a JSON line, and the lines into the
results table (Markdown + JSON). Standard library only."""
import argparse
import glob
import json
import os
import struct
import sys


def wav_left_frames(path):
    """20 ms frames of the left (caller) channel that carry sound, and all frames."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 44 or data[:4] != b"RIFF":
        return 0, 0
    channels = struct.unpack_from("<H", data, 22)[0]
    pcm = data[44:]
    step = 2 * channels
    frame = 160 * step
    sound = total = 0
    for off in range(0, len(pcm) - frame + 1, frame):
        total += 1
        chunk = pcm[off:off + frame]
        if any(chunk[i] or chunk[i + 1] for i in range(0, len(chunk), step)):
            sound += 1
    return sound, total


def recordings(rec_dir, sent_by_call):
    out = {"total": 0, "complete": 0, "overflow_frames": 0, "duration_mismatch_ms_max": 0,
           "caller_packets_sent": 0, "caller_frames_recorded": 0, "packets_missing": 0}
    for side in glob.glob(os.path.join(rec_dir, "*.json")):
        try:
            meta = json.load(open(side))
        except (OSError, ValueError):
            continue
        out["total"] += 1
        if meta.get("status") == "complete":
            out["complete"] += 1
        out["overflow_frames"] += meta.get("overflow_frames", 0)
        wav = side[:-5] + ".wav"
        if os.path.exists(wav) and meta.get("call_id") in sent_by_call:
            sound, _ = wav_left_frames(wav)
            sent = sent_by_call[meta["call_id"]]
            out["caller_packets_sent"] += sent
            out["caller_frames_recorded"] += sound
            out["packets_missing"] += max(0, sent - sound)
    return out


def profile_a(a):
    clk = a.clk
    gw = a.gw_ticks / clk
    gen = a.gen_ticks / clk
    row = {
        "profile": "A", "name": a.name, "generator": a.generator, "calls": a.calls,
        "window_s": a.window,
        "gw_cpu_s": gw, "gen_cpu_s": gen,
        "gw_pct_core_per_call": 100.0 * gw / a.window / a.calls,
        "gen_pct_core_per_call": 100.0 * gen / a.window / a.calls,
        "gw_to_gen": (gw / gen) if gen > 0 else None,
        "rss_idle_kib": a.rss_idle, "rss_active_kib": a.rss_active,
        "rss_per_call_kib": (a.rss_active - a.rss_idle) / a.calls,
        "rss_after_kib": a.rss_after,
    }
    sent = {}
    if a.loadgen:
        lg = json.load(open(a.loadgen))
        for k in ("attempted", "answered", "failed", "setup_ms_avg", "setup_ms_p99", "rtp_sent",
                  "rtp_received", "pacing_ms_p50", "pacing_ms_p99", "pacing_ms_max"):
            row[k] = lg.get(k)
        sent = {c["call_id"]: c["sent"] for c in lg.get("calls", [])}
    if a.sipp_stat:
        lines = open(a.sipp_stat).read().strip().splitlines()
        head = lines[0].split(";")
        last = lines[-1].split(";")
        get = lambda name: int(last[head.index(name)]) if name in head else None
        row["answered"] = get("SuccessfulCall(C)")
        row["failed"] = get("FailedCall(C)")
        row["attempted"] = get("OutgoingCall(C)")
    row["recordings"] = recordings(a.recordings, sent)
    print(json.dumps(row))


def profile_b(a):
    lg = json.load(open(a.loadgen))
    gw = a.gw_ticks / a.clk
    n = max(1, lg["attempted"])
    row = {"profile": "B", "name": a.name, "rate": a.rate, "gw_cpu_s": gw,
           "gen_cpu_s": lg["loadgen_cpu_s"],
           "gw_ms_per_call": 1000 * gw / n, "gen_ms_per_call": 1000 * lg["loadgen_cpu_s"] / n,
           "gw_to_gen": gw / lg["loadgen_cpu_s"] if lg["loadgen_cpu_s"] > 0 else None}
    for k in ("attempted", "answered", "failed", "achieved_cps", "setup_ms_avg", "setup_ms_p50",
              "setup_ms_p99", "setup_ms_max", "retransmissions"):
        row[k] = lg.get(k)
    print(json.dumps(row))


def memory(a):
    first = a.rss_after[0]
    row = {"profile": "memory", "name": a.name, "calls_per_batch": a.calls,
           "rss_idle_kib": a.rss_idle, "rss_after_batches_kib": a.rss_after,
           "growth_vs_first_pct": [100.0 * (x - first) / first for x in a.rss_after]}
    print(json.dumps(row))


def fmt(v, d=2):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{d}f}"
    return str(v)


def summary(a):
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    doc = {"tag": a.tag, "cpus": a.cpus, "load_start": a.load_start, "load_end": a.load_end,
           "smoke": a.smoke == "1", "results": rows}
    json.dump(doc, open(a.json, "w"), indent=1)
    md = [f"# bench-load {a.tag}", "",
          f"{a.cpus} CPUs; load average at start {a.load_start}, at end {a.load_end}.", ""]
    pa = [r for r in rows if r["profile"] == "A"]
    if pa:
        md += ["## Profile A: concurrent recorded calls, 20 ms G.711 both ways", "",
               "| run | calls ok/failed | gateway % core/call | generator % core/call | gateway / generator | RSS KiB/active call | RSS after MiB | setup ms avg | pacing ms p50/p99/max | caller packets sent / recorded / missing | recordings complete | overflow |",
               "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|"]
        for r in pa:
            rec = r["recordings"]
            md.append(
                f"| {r['name']} | {fmt(r.get('answered'))}/{fmt(r.get('failed'))} | {fmt(r['gw_pct_core_per_call'], 4)} | "
                f"{fmt(r['gen_pct_core_per_call'], 4)} | {fmt(r['gw_to_gen'])} | {fmt(r['rss_per_call_kib'], 1)} | "
                f"{r['rss_after_kib'] / 1024:.1f} | {fmt(r.get('setup_ms_avg'))} | "
                f"{fmt(r.get('pacing_ms_p50'))}/{fmt(r.get('pacing_ms_p99'))}/{fmt(r.get('pacing_ms_max'))} | "
                f"{rec['caller_packets_sent']}/{rec['caller_frames_recorded']}/{rec['packets_missing']} | "
                f"{rec['complete']}/{rec['total']} | {rec['overflow_frames']} |")
        md.append("")
        for r in pa:
            off = next((o for o in pa if o["name"] == r["name"] + "-norec"), None)
            if off and off["gw_pct_core_per_call"] > 0 and off["rss_per_call_kib"]:
                md.append(
                    f"- {r['name']}: with recording the gateway costs "
                    f"{r['gw_pct_core_per_call'] / off['gw_pct_core_per_call']:.2f}x its CPU per call "
                    f"without, and {r['rss_per_call_kib'] / off['rss_per_call_kib']:.2f}x its RSS per call.")
        md.append("")
    pb = [r for r in rows if r["profile"] == "B"]
    if pb:
        md += ["## Profile B: short recorded calls (0.5 s) at rising rates", "",
               "| rate | attempted | answered | failed | achieved calls/s | setup ms avg / p99 / max | retransmissions | gateway ms CPU/call | generator ms CPU/call | gateway / generator |",
               "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for r in pb:
            md.append(
                f"| {r['rate']} | {r['attempted']} | {r['answered']} | {r['failed']} | {fmt(r['achieved_cps'], 1)} | "
                f"{fmt(r['setup_ms_avg'])} / {fmt(r['setup_ms_p99'])} / {fmt(r['setup_ms_max'])} | {r['retransmissions']} | "
                f"{fmt(r['gw_ms_per_call'], 3)} | {fmt(r['gen_ms_per_call'], 3)} | {fmt(r['gw_to_gen'])} |")
        md.append("")
    for r in rows:
        if r["profile"] == "memory":
            md += ["## Memory: three identical batches of short recorded calls", "",
                   f"{r['calls_per_batch']} calls per batch. RSS idle {r['rss_idle_kib'] / 1024:.1f} MiB; after each batch: "
                   + ", ".join(f"{x / 1024:.1f} MiB" for x in r["rss_after_batches_kib"])
                   + "; change from the first: "
                   + ", ".join(f"{g:+.1f} %" for g in r["growth_vs_first_pct"]) + ".", ""]
    open(a.markdown, "w").write("\n".join(md) + "\n")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("profile-a")
    for k in ("name", "generator", "recordings", "loadgen", "sipp_stat"):
        s.add_argument("--" + k.replace("_", "-"))
    for k in ("calls", "window", "clk", "gw_ticks", "gen_ticks", "rss_idle", "rss_active", "rss_after"):
        s.add_argument("--" + k.replace("_", "-"), type=int)
    s = sub.add_parser("profile-b")
    s.add_argument("--name")
    s.add_argument("--loadgen")
    for k in ("rate", "clk", "gw_ticks"):
        s.add_argument("--" + k.replace("_", "-"), type=int)
    s = sub.add_parser("memory")
    s.add_argument("--name")
    s.add_argument("--calls", type=int)
    s.add_argument("--rss-idle", type=int)
    s.add_argument("--rss-after", type=int, nargs="+")
    s = sub.add_parser("summary")
    for k in ("results", "tag", "load_start", "load_end", "cpus", "smoke", "json", "markdown"):
        s.add_argument("--" + k.replace("_", "-"))
    a = p.parse_args()
    {"profile-a": profile_a, "profile-b": profile_b, "memory": memory, "summary": summary}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
