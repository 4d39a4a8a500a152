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


def pct(num, den):
    return 100.0 * num / den if den else None


def profile_w(a):
    """A call bridged to a WebSocket bot: CPU of the gateway, the load client and the bot over
    the same window; audio delivery both ways, call by call (SIP Call-ID = the bot's
    X-Voxgate-Call-Id)."""
    clk = a.clk
    gw, gen, bot = a.gw_ticks / clk, a.gen_ticks / clk, a.bot_ticks / clk
    per_call = lambda cpu: 100.0 * cpu / a.window / a.calls
    row = {
        "profile": "W", "name": a.name, "calls": a.calls, "hold_s": a.hold, "window_s": a.window,
        "recorded": a.recorded == 1,
        "gw_cpu_s": gw, "gen_cpu_s": gen, "bot_cpu_s": bot,
        "gw_pct_core_per_call": per_call(gw), "gen_pct_core_per_call": per_call(gen),
        "bot_pct_core_per_call": per_call(bot),
        "gw_to_gen": (gw / gen) if gen > 0 else None,
        "gw_to_gens": (gw / (gen + bot)) if gen + bot > 0 else None,
        "rss_idle_kib": a.rss_idle, "rss_active_kib": a.rss_active,
        "rss_per_call_kib": (a.rss_active - a.rss_idle) / a.calls,
        "rss_after_kib": a.rss_after,
    }
    lg = json.load(open(a.loadgen))
    wb = json.load(open(a.wsbot))
    for k in ("attempted", "answered", "failed", "setup_ms_avg", "setup_ms_p99", "rtp_sent",
              "rtp_received", "rtp_received_sound", "pacing_ms_p50", "pacing_ms_p99",
              "pacing_ms_max"):
        row[k] = lg.get(k)
    for k in ("connections", "answered", "ended", "recordings_started"):
        row["bot_" + k] = wb.get(k)
    row["bot_tx_errors"] = wb["totals"]["tx_errors"]
    row["bot_rx_odd"] = wb["totals"]["rx_odd"]
    bot_calls = {c["call_id"]: c for c in wb.get("calls", [])}
    d = {"calls_matched": 0, "caller_sent": 0, "bot_rx": 0, "bot_rx_sound": 0,
         "expected_frames": 0.0, "bot_tx": 0, "bot_tx_before_end": 0, "caller_rx": 0,
         "caller_rx_sound": 0, "caller_expected": 0.0, "bot_tx_in_flight": 0,
         "bot_tx_deliverable": 0, "caller_rx_sound_deliverable": 0}
    worst = {"c2b": None, "b2c": None}
    # How many calls missed how many frames (sent - delivered), each way.
    missing = {"c2b": {}, "b2c": {}}
    # Calls that missed frames: how long before session.end reached the bot its last frame
    # from the gateway arrived (c2b) or its last frame to the gateway left (b2c), in ms.
    gap = {"c2b": [], "b2c": [], "c2b_ok": [], "b2c_ok": []}
    for c in lg.get("calls", []):
        b = bot_calls.get(c["call_id"])
        if not c.get("answered") or b is None:
            continue
        d["calls_matched"] += 1
        media_s = c.get("media_ms", 0) / 1000.0
        d["caller_sent"] += c["sent"]
        d["bot_rx"] += b["rx_frames"]
        d["bot_rx_sound"] += b["rx_sound"]
        d["expected_frames"] += 50 * media_s
        d["bot_tx"] += b["tx_frames"]
        d["bot_tx_before_end"] += b["tx_before_end"]
        d["caller_rx"] += c["received"]
        d["caller_rx_sound"] += c["received_sound"]
        d["caller_expected"] += 50 * media_s
        # Frames the bot sent after the client's BYE, or in the 20 ms before it (one media
        # tick), are in flight at the hang-up: the gateway plays audio in real time, on its
        # next tick, and no tick comes for a call that has ended. Both clocks are this
        # machine's wall clock.
        t0 = wb.get("t0_unix_ms")
        if t0 is not None and c.get("bye_unix_ms"):
            bye = c["bye_unix_ms"] - t0
            in_flight = sum(1 for t in b.get("tx_recent_ms", []) if t > bye - 20.0)
        else:
            in_flight = 0
        deliverable = b["tx_before_end"] - in_flight
        d["bot_tx_in_flight"] += in_flight
        d["bot_tx_deliverable"] += deliverable
        d["caller_rx_sound_deliverable"] += min(c["received_sound"], deliverable)
        for k, m in (("c2b", c["sent"] - b["rx_sound"]),
                     ("b2c", deliverable - min(c["received_sound"], deliverable))):
            missing[k][str(m)] = missing[k].get(str(m), 0) + 1
            last = b.get("last_rx_ms" if k == "c2b" else "last_tx_ms")
            if b.get("end_ms") is not None and last is not None:
                gap[k if m > 0 else k + "_ok"].append(b["end_ms"] - last)
        for k, v in (("c2b", pct(b["rx_sound"], c["sent"])),
                     ("b2c", pct(min(c["received_sound"], deliverable), deliverable))):
            if v is not None and (worst[k] is None or v < worst[k]):
                worst[k] = v
    d["expected_frames"] = round(d["expected_frames"])
    d["caller_expected"] = round(d["caller_expected"])
    # caller -> bot: the caller's packets that reached the bot as frames with sound (the
    # client sends a tone, the gateway's own fill is silence), and the bot's whole stream
    # against 50 frames/s over the answered time.
    d["c2b_delivered_pct"] = pct(d["bot_rx_sound"], d["caller_sent"])
    d["c2b_stream_pct"] = pct(d["bot_rx"], d["expected_frames"])
    d["c2b_silence_frames"] = d["bot_rx"] - d["bot_rx_sound"]
    # bot -> caller: RTP packets with sound at the client against the frames the bot sent
    # before it got session.end.
    d["b2c_delivered_pct"] = pct(d["caller_rx_sound"], d["bot_tx_before_end"])
    # ... and against the frames the bot sent at least 20 ms before the hang-up.
    d["b2c_deliverable_pct"] = pct(d["caller_rx_sound_deliverable"], d["bot_tx_deliverable"])
    d["b2c_stream_pct"] = pct(d["caller_rx"], d["caller_expected"])
    d["c2b_worst_call_pct"] = worst["c2b"]
    d["b2c_worst_call_pct"] = worst["b2c"]
    order = lambda h: dict(sorted(h.items(), key=lambda kv: int(kv[0])))
    d["c2b_missing_per_call"] = order(missing["c2b"])
    d["b2c_missing_per_call"] = order(missing["b2c"])
    rng = lambda v: [round(min(v), 1), round(max(v), 1)] if v else None
    for k in gap:
        d[k.replace("_ok", "") + ("_last_to_end_ms_complete" if k.endswith("_ok") else "_last_to_end_ms_missing")] = rng(gap[k])
    row["delivery"] = d
    if a.recorded == 1:
        row["recordings"] = recordings(a.recordings, {c["call_id"]: c["sent"] for c in lg.get("calls", [])})
    print(json.dumps(row))
    # The figures are not judged here, but a run where no audio went either way measured
    # nothing: fail it (so --smoke catches a broken bot bridge or a broken bench).
    if not (d["calls_matched"] and d["bot_rx_sound"] and d["caller_rx_sound"]):
        print(f"bench_report: {a.name}: no call carried audio both ways "
              f"(matched {d['calls_matched']}, bot received {d['bot_rx_sound']}, "
              f"client received {d['caller_rx_sound']})", file=sys.stderr)
        return 1


def memory(a):
    first = a.rss_after[0]
    row = {"profile": "memory", "name": a.name, "calls_per_batch": a.calls,
           "rss_idle_kib": a.rss_idle, "rss_after_batches_kib": a.rss_after,
           "growth_vs_first_pct": [100.0 * (x - first) / first for x in a.rss_after]}
    # jemalloc's own figures (0 from a build that does not publish them): the live heap
    # tells growth the program holds from pages the allocator has not returned yet.
    if a.heap_after and all(a.heap_after):
        row["heap_allocated_after_batches_kib"] = a.heap_after
        row["heap_growth_vs_first_pct"] = [100.0 * (x - a.heap_after[0]) / a.heap_after[0]
                                           for x in a.heap_after]
        row["heap_resident_after_batches_kib"] = a.resident_after
    print(json.dumps(row))


def fmt(v, d=2):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{d}f}"
    return str(v)


def recording_cost(r, runs):
    """The Markdown line that compares run r with its "-norec" twin among runs (the same run
    with recording off): the gateway's CPU and RSS per call with recording against without.
    An empty list when there is no twin, or its CPU or RSS per call is zero."""
    off = next((o for o in runs if o["name"] == r["name"] + "-norec"), None)
    if not (off and off["gw_pct_core_per_call"] > 0 and off["rss_per_call_kib"]):
        return []
    return [f"- {r['name']}: with recording the gateway costs "
            f"{r['gw_pct_core_per_call'] / off['gw_pct_core_per_call']:.2f}x its CPU per call "
            f"without, and {r['rss_per_call_kib'] / off['rss_per_call_kib']:.2f}x its RSS per call."]


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
            md += recording_cost(r, pa)
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
    pw = [r for r in rows if r["profile"] == "W"]
    if pw:
        md += ["## Profile W: concurrent calls bridged to a WebSocket bot, audio both ways", "",
               "The bot (benches/wsbot.rs) answers, optionally sends `record.start`, and sends 20 ms PCM16 "
               "frames of a tone at real time; the light client sends a 20 ms PCMU tone. "
               "caller → bot: frames with sound the bot received / RTP packets the client sent "
               "(stream: all frames the bot received / 50 per answered second). "
               "bot → caller: RTP packets with sound the client received / frames the bot sent "
               "at least 20 ms (one media tick) before the client's BYE; frames sent later (until `session.end` "
               "reached the bot) are in flight at the hang-up (listed below, with the ratio to all frames sent "
               "before `session.end`) "
               "(stream: all RTP packets / 50 per answered second).", "",
               "| run | calls ok/failed | gateway % core/call | client % core/call | bot % core/call | gateway / client | gateway / (client + bot) | RSS KiB/active call | setup ms avg | caller → bot delivered | caller → bot stream | bot → caller delivered | bot → caller stream | pacing ms p50/p99/max | recordings complete |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---|---|"]
        for r in pw:
            d = r["delivery"]
            rec = r.get("recordings")
            md.append(
                f"| {r['name']} | {fmt(r.get('answered'))}/{fmt(r.get('failed'))} | {fmt(r['gw_pct_core_per_call'], 4)} | "
                f"{fmt(r['gen_pct_core_per_call'], 4)} | {fmt(r['bot_pct_core_per_call'], 4)} | {fmt(r['gw_to_gen'])} | "
                f"{fmt(r['gw_to_gens'])} | {fmt(r['rss_per_call_kib'], 1)} | {fmt(r.get('setup_ms_avg'))} | "
                f"{fmt(d['c2b_delivered_pct'], 3)} % ({d['bot_rx_sound']}/{d['caller_sent']}) | "
                f"{fmt(d['c2b_stream_pct'], 3)} % ({d['bot_rx']}/{d['expected_frames']}) | "
                f"{fmt(d.get('b2c_deliverable_pct'), 3)} % ({d.get('caller_rx_sound_deliverable')}/{d.get('bot_tx_deliverable')}) | "
                f"{fmt(d['b2c_stream_pct'], 3)} % ({d['caller_rx']}/{d['caller_expected']}) | "
                f"{fmt(r.get('pacing_ms_p50'))}/{fmt(r.get('pacing_ms_p99'))}/{fmt(r.get('pacing_ms_max'))} | "
                f"{(str(rec['complete']) + '/' + str(rec['total'])) if rec else 'off'} |")
        md.append("")
        for r in pw:
            d = r["delivery"]
            md.append(
                f"- {r['name']}: {d['calls_matched']} calls matched client/bot; silence frames the gateway "
                f"filled for the bot {d['c2b_silence_frames']}; worst call caller → bot "
                f"{fmt(d['c2b_worst_call_pct'], 2)} %, bot → caller {fmt(d['b2c_worst_call_pct'], 2)} %; "
                f"the bot sent {d['bot_tx']} frames in all ({d['bot_tx'] - d['bot_tx_before_end']} after session.end, "
                f"{d.get('bot_tx_in_flight')} from 20 ms before the BYE to session.end, in flight at the hang-up); bot → caller against every frame "
                f"sent before session.end {fmt(d['b2c_delivered_pct'], 3)} % ({d['caller_rx_sound']}/{d['bot_tx_before_end']}); "
                f"frames missing per call (missing: calls) caller → bot {d['c2b_missing_per_call']}, "
                f"bot → caller {d['b2c_missing_per_call']}; last frame to session.end, ms min-max, calls that "
                f"missed frames / complete calls: caller → bot (last received) {d['c2b_last_to_end_ms_missing']} / "
                f"{d['c2b_last_to_end_ms_complete']}, bot → caller (last sent) {d['b2c_last_to_end_ms_missing']} / "
                f"{d['b2c_last_to_end_ms_complete']}.")
            md += recording_cost(r, pw)
        md.append("")
    for r in rows:
        if r["profile"] == "memory":
            md += ["## Memory: three identical batches of short recorded calls", "",
                   f"{r['calls_per_batch']} calls per batch. RSS idle {r['rss_idle_kib'] / 1024:.1f} MiB; after each batch: "
                   + ", ".join(f"{x / 1024:.1f} MiB" for x in r["rss_after_batches_kib"])
                   + "; change from the first: "
                   + ", ".join(f"{g:+.1f} %" for g in r["growth_vs_first_pct"]) + "."]
            if "heap_allocated_after_batches_kib" in r:
                md += ["", "Live heap (jemalloc `allocated`) after each batch: "
                       + ", ".join(f"{x / 1024:.1f} MiB" for x in r["heap_allocated_after_batches_kib"])
                       + "; change from the first: "
                       + ", ".join(f"{g:+.1f} %" for g in r["heap_growth_vs_first_pct"])
                       + "; allocator resident: "
                       + ", ".join(f"{x / 1024:.1f} MiB" for x in r["heap_resident_after_batches_kib"]) + "."]
            md.append("")
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
    s = sub.add_parser("profile-w")
    for k in ("name", "recordings", "loadgen", "wsbot"):
        s.add_argument("--" + k)
    for k in ("calls", "hold", "window", "clk", "gw_ticks", "gen_ticks", "bot_ticks", "rss_idle",
              "rss_active", "rss_after", "recorded"):
        s.add_argument("--" + k.replace("_", "-"), type=int)
    s = sub.add_parser("memory")
    s.add_argument("--name")
    s.add_argument("--calls", type=int)
    s.add_argument("--rss-idle", type=int)
    s.add_argument("--rss-after", type=int, nargs="+")
    s.add_argument("--heap-after", type=int, nargs="*", default=[])
    s.add_argument("--resident-after", type=int, nargs="*", default=[])
    s = sub.add_parser("summary")
    for k in ("results", "tag", "load_start", "load_end", "cpus", "smoke", "json", "markdown"):
        s.add_argument("--" + k.replace("_", "-"))
    a = p.parse_args()
    return {"profile-a": profile_a, "profile-b": profile_b, "profile-w": profile_w,
            "memory": memory, "summary": summary}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
