//! A light SIP + RTP load client for `scripts/bench-load`: one thread, one epoll loop, one
//! UDP socket per call, 20 ms G.711 both ways. SIPp runs media per call in its own threads,
//! which caps what it can drive on 2 cores; this client costs a few microseconds per packet,
//! so the gateway's cost can be measured at higher call counts. It measures what the
//! gateway sends back: egress pacing (inter-arrival of each call's RTP, kernel receive
//! timestamps), packets, setup time.
//!
//! ```text
//! cargo build --release --example loadgen
//! target/release/examples/loadgen --target 127.0.0.1:5060 --calls 100 --rate 20 \
//!     --hold-ms 30000 --media benches/../tests/sipp/media/hello_3s.ulaw --json out.json
//! ```
//!
//! Options: `--target HOST:PORT`, `--calls N` (total), `--rate R` (new calls per second),
//! `--hold-ms MS` (after the 200, before BYE), `--media FILE` (raw μ-law, looped; a 440 Hz tone
//! if absent), `--json FILE` (results), `--bind IP` (default 127.0.0.1), `--timeout-s S`
//! (whole run, default hold + calls/rate + 60).
//! Loopback only: it refuses a target outside 127.0.0.0/8 and ::1.

#[path = "common/args.rs"]
mod args;

use std::collections::HashMap;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(20);
const T1: Duration = Duration::from_millis(500);

struct Args {
    target: SocketAddr,
    bind: IpAddr,
    calls: usize,
    rate: f64,
    hold: Duration,
    media: Vec<u8>,
    json: Option<String>,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut cli = args::Cli::from_env();
    let mut target = None;
    let mut bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (mut calls, mut rate, mut hold_ms) = (10usize, 10f64, 1000u64);
    let (mut media, mut json, mut timeout) = (Vec::new(), None, None);
    while let Some(o) = cli.next_opt() {
        match o.as_str() {
            "--target" => target = Some(cli.parse()?),
            "--bind" => bind = cli.parse()?,
            "--calls" => calls = cli.parse()?,
            "--rate" => rate = cli.parse()?,
            "--hold-ms" => hold_ms = cli.parse()?,
            "--media" => {
                let p = cli.value()?;
                media = std::fs::read(&p).map_err(|e| format!("--media {p}: {e}"))?;
            }
            "--json" => json = Some(cli.value()?),
            "--timeout-s" => timeout = Some(Duration::from_secs(cli.parse()?)),
            _ => return Err(cli.unknown()),
        }
    }
    let target: SocketAddr = target.ok_or("--target is required")?;
    if !target.ip().is_loopback() || !bind.is_loopback() {
        return Err("loopback only: --target and --bind must be 127.0.0.0/8 or ::1".into());
    }
    if rate <= 0.0 || calls == 0 {
        return Err("--calls and --rate must be positive".into());
    }
    let hold = Duration::from_millis(hold_ms);
    let timeout = timeout
        .unwrap_or(hold + Duration::from_secs_f64(calls as f64 / rate) + Duration::from_secs(60));
    Ok(Args {
        target,
        bind,
        calls,
        rate,
        hold,
        media,
        json,
        timeout,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Inviting,
    Media,
    Byeing,
    Done,
    Failed,
}

struct Call {
    call_id: String,
    from_tag: String,
    to_tag: Option<String>,
    branch: String,
    sock: UdpSocket,
    /// The RTCP port next to `sock` (RTP + 1), held so the gateway's RTCP for this call lands
    /// here, as with a real endpoint, and not in another call's RTP socket. Never read.
    _rtcp: UdpSocket,
    phase: Phase,
    invite: String,
    invited_at: Instant,
    last_tx: Instant,
    tries: u32,
    answered_at: Option<Instant>,
    bye_at: Option<Instant>,
    /// The BYE's wall-clock time, ms since the Unix epoch (the bench compares it with the
    /// WebSocket bot's clock).
    bye_unix_ms: f64,
    remote_rtp: Option<SocketAddr>,
    seq: u16,
    ts: u32,
    media_pos: usize,
    sent: u64,
    received: u64,
    /// Received packets whose payload is not all G.711 silence (the bot's tone, a prompt).
    received_sound: u64,
    last_arrival_ns: Option<i128>,
}

/// Inter-arrival histogram, 10 µs buckets up to 200 ms.
struct Hist {
    b: Vec<u64>,
    max_us: u64,
    n: u64,
}

impl Hist {
    fn new() -> Self {
        Hist {
            b: vec![0; 20_001],
            max_us: 0,
            n: 0,
        }
    }
    fn add(&mut self, us: u64) {
        self.b[(us / 10).min(20_000) as usize] += 1;
        self.max_us = self.max_us.max(us);
        self.n += 1;
    }
    fn pct(&self, p: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let want = ((self.n as f64) * p / 100.0).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.b.iter().enumerate() {
            seen += c;
            if seen >= want {
                return (i as f64 * 10.0 + 5.0) / 1000.0;
            }
        }
        self.max_us as f64 / 1000.0
    }
}

fn main() {
    let args = args::or_exit("loadgen", parse_args());
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    }
}

fn rnd() -> u64 {
    // xorshift on the clock: enough for tags and branches.
    let mut x = Instant::now().elapsed().as_nanos() as u64
        ^ (std::process::id() as u64) << 32
        ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^ (x << 17)
}
static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn run(a: &Args) -> Result<(), String> {
    let io_err = |e: io::Error| e.to_string();
    let sip = UdpSocket::bind(SocketAddr::new(a.bind, 0)).map_err(io_err)?;
    sip.set_nonblocking(true).map_err(io_err)?;
    let sip_addr = sip.local_addr().map_err(io_err)?;
    let mut ep = Epoll::new().map_err(io_err)?;
    ep.add(sip.as_raw_fd(), u64::MAX).map_err(io_err)?;

    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let deadline = start + a.timeout;
    let mut calls: Vec<Call> = Vec::with_capacity(a.calls);
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut next_tick = start;
    let mut pacing = Hist::new();
    let mut setup = Vec::new();
    let mut buf = vec![0u8; 4096];
    // Without --media: a 440 Hz tone, so every packet is sound the recording must hold.
    let tone: Vec<u8> = (0..8000)
        .map(|i| {
            let x = (i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin() * 6000.0;
            ulaw(x as i16)
        })
        .collect();
    let media = if a.media.len() >= 160 {
        &a.media
    } else {
        &tone
    };
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let mut retrans = 0u64;

    loop {
        let now = Instant::now();
        if now > deadline {
            eprintln!("loadgen: run timed out");
            break;
        }
        // Start calls on schedule.
        while calls.len() < a.calls && start + interval * calls.len() as u32 <= now {
            let i = calls.len();
            let (sock, rtcp) = bind_pair(a.bind).map_err(io_err)?;
            sock.set_nonblocking(true).map_err(io_err)?;
            enable_timestamps(&sock);
            ep.add(sock.as_raw_fd(), i as u64).map_err(io_err)?;
            let rtp_port = sock.local_addr().map_err(io_err)?.port();
            let call_id = format!("lg-{:x}-{i}@{}", rnd(), a.bind);
            let (from_tag, branch) = (format!("{:x}", rnd()), format!("z9hG4bK{:x}", rnd()));
            let invite = invite_msg(a, sip_addr, &call_id, &from_tag, &branch, rtp_port);
            sip.send_to(invite.as_bytes(), a.target).ok();
            by_id.insert(call_id.clone(), i);
            calls.push(Call {
                call_id,
                from_tag,
                to_tag: None,
                branch,
                sock,
                _rtcp: rtcp,
                phase: Phase::Inviting,
                invite,
                invited_at: now,
                last_tx: now,
                tries: 1,
                answered_at: None,
                bye_at: None,
                bye_unix_ms: 0.0,
                remote_rtp: None,
                seq: (rnd() & 0xFFFF) as u16,
                ts: rnd() as u32,
                media_pos: 0,
                sent: 0,
                received: 0,
                received_sound: 0,
                last_arrival_ns: None,
            });
        }
        // Timers: retransmissions, hold expiry.
        for c in calls.iter_mut() {
            match c.phase {
                Phase::Inviting | Phase::Byeing
                    if now - c.last_tx >= T1 * (1 << c.tries.min(4)) / 2 =>
                {
                    if c.tries >= 7 {
                        c.phase = Phase::Failed;
                        continue;
                    }
                    let msg = if c.phase == Phase::Inviting {
                        c.invite.clone()
                    } else {
                        bye_msg(a, sip_addr, c)
                    };
                    sip.send_to(msg.as_bytes(), a.target).ok();
                    c.tries += 1;
                    c.last_tx = now;
                    retrans += 1;
                }
                Phase::Media if c.answered_at.is_some_and(|t| now >= t + a.hold) => {
                    c.phase = Phase::Byeing;
                    c.branch = format!("z9hG4bK{:x}", rnd());
                    c.tries = 1;
                    c.last_tx = now;
                    c.bye_at = Some(now);
                    c.bye_unix_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
                    sip.send_to(bye_msg(a, sip_addr, c).as_bytes(), a.target)
                        .ok();
                }
                _ => {}
            }
        }
        // RTP, 20 ms.
        if now >= next_tick {
            for c in calls.iter_mut().filter(|c| c.phase == Phase::Media) {
                let Some(dest) = c.remote_rtp else { continue };
                let mut pkt = [0u8; 172];
                pkt[0] = 0x80;
                pkt[1] = if c.sent == 0 { 0x80 } else { 0 };
                pkt[2..4].copy_from_slice(&c.seq.to_be_bytes());
                pkt[4..8].copy_from_slice(&c.ts.to_be_bytes());
                pkt[8..12].copy_from_slice(&0x4C47_0000u32.to_be_bytes());
                for (k, b) in pkt[12..].iter_mut().enumerate() {
                    *b = media[(c.media_pos + k) % media.len()];
                }
                c.media_pos = (c.media_pos + 160) % media.len();
                c.seq = c.seq.wrapping_add(1);
                c.ts = c.ts.wrapping_add(160);
                if c.sock.send_to(&pkt, dest).is_ok() {
                    c.sent += 1;
                }
            }
            next_tick += TICK;
            if next_tick < now {
                next_tick = now + TICK;
            }
        }
        if calls.len() == a.calls
            && calls
                .iter()
                .all(|c| matches!(c.phase, Phase::Done | Phase::Failed))
        {
            break;
        }
        let next_start = if calls.len() < a.calls {
            start + interval * calls.len() as u32
        } else {
            next_tick
        };
        let wait = next_tick
            .min(next_start)
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(20));
        for token in ep.wait(wait).map_err(io_err)? {
            if token == u64::MAX {
                while let Ok((n, _)) = sip.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    on_sip(a, &sip, sip_addr, &text, &mut calls, &by_id, &mut setup);
                }
            } else if let Some(c) = calls.get_mut(token as usize) {
                while let Some((n, from, ts_ns)) = recv_stamped(&c.sock, &mut buf) {
                    // Only the gateway's RTP for this call counts (not RTCP, not strays).
                    if n >= 12 && from.is_some() && from == c.remote_rtp && is_rtp(&buf[..n]) {
                        c.received += 1;
                        if has_sound(&buf[..n]) {
                            c.received_sound += 1;
                        }
                        if let (Some(prev), Some(t)) = (c.last_arrival_ns, ts_ns) {
                            pacing.add(((t - prev).max(0) / 1000) as u64);
                        }
                        c.last_arrival_ns = ts_ns;
                    }
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let answered = calls.iter().filter(|c| c.answered_at.is_some()).count();
    let failed = calls.iter().filter(|c| c.phase != Phase::Done).count();
    setup.sort_by(|x: &f64, y| x.total_cmp(y));
    let avg = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let pct = |v: &[f64], p: f64| {
        if v.is_empty() {
            0.0
        } else {
            v[((v.len() as f64 * p / 100.0).ceil() as usize).clamp(1, v.len()) - 1]
        }
    };
    let first = calls.first().map(|c| c.invited_at).unwrap_or(start);
    let last = calls.last().map(|c| c.invited_at).unwrap_or(start);
    let span = (last - first).as_secs_f64();
    let per_call: Vec<String> = calls
        .iter()
        .map(|c| {
            format!(
                "{{\"call_id\":\"{}\",\"sent\":{},\"received\":{},\"received_sound\":{},\"answered\":{},\"media_ms\":{:.1},\"bye_unix_ms\":{:.3}}}",
                c.call_id,
                c.sent,
                c.received,
                c.received_sound,
                c.answered_at.is_some(),
                match (c.answered_at, c.bye_at) {
                    (Some(a), Some(b)) => (b - a).as_secs_f64() * 1000.0,
                    _ => 0.0,
                },
                c.bye_unix_ms
            )
        })
        .collect();
    let json = format!(
        "{{\"attempted\":{},\"answered\":{},\"failed\":{},\"achieved_cps\":{:.1},\"setup_ms_avg\":{:.2},\"setup_ms_p50\":{:.2},\"setup_ms_p99\":{:.2},\"setup_ms_max\":{:.2},\"retransmissions\":{},\"rtp_sent\":{},\"rtp_received\":{},\"rtp_received_sound\":{},\"pacing_ms_p50\":{:.3},\"pacing_ms_p99\":{:.3},\"pacing_ms_max\":{:.3},\"pacing_samples\":{},\"loadgen_cpu_s\":{:.3},\"wall_s\":{:.2},\"calls\":[{}]}}",
        calls.len(),
        answered,
        failed,
        if span > 0.0 { (calls.len() - 1) as f64 / span } else { 0.0 },
        avg(&setup),
        pct(&setup, 50.0),
        pct(&setup, 99.0),
        setup.last().copied().unwrap_or(0.0),
        retrans,
        calls.iter().map(|c| c.sent).sum::<u64>(),
        calls.iter().map(|c| c.received).sum::<u64>(),
        calls.iter().map(|c| c.received_sound).sum::<u64>(),
        pacing.pct(50.0),
        pacing.pct(99.0),
        pacing.max_us as f64 / 1000.0,
        pacing.n,
        cpu,
        elapsed,
        per_call.join(",")
    );
    match &a.json {
        Some(p) => std::fs::write(p, &json).map_err(|e| format!("{p}: {e}"))?,
        None => println!("{json}"),
    }
    eprintln!(
        "loadgen: {} calls, {answered} answered, {failed} failed, setup avg {:.1} ms, pacing p99 {:.2} ms, cpu {cpu:.2} s",
        calls.len(),
        avg(&setup),
        pacing.pct(99.0)
    );
    Ok(())
}

fn ulaw(sample: i16) -> u8 {
    let x = i32::from(sample);
    let mut m = if x < 0 { (!x) >> 2 } else { x >> 2 } + 33;
    m = m.min(0x1FFF);
    let mut seg = 1;
    let mut i = m >> 6;
    while i != 0 {
        seg += 1;
        i >>= 1;
    }
    let code = (((8 - seg) << 4) | (0x0F - ((m >> seg) & 0x0F))) as u8;
    if x >= 0 {
        code | 0x80
    } else {
        code
    }
}

fn invite_msg(
    a: &Args,
    me: SocketAddr,
    call_id: &str,
    tag: &str,
    branch: &str,
    rtp: u16,
) -> String {
    let ip = me.ip();
    let sdp = format!(
        "v=0\r\no=lg 1 1 IN IP4 {ip}\r\ns=lg\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {rtp} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    );
    format!(
        "INVITE sip:bot@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:loadgen@{ip}>;tag={tag}\r\nTo: <sip:bot@{t}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:loadgen@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len(),
        t = a.target
    )
}

fn ack_msg(a: &Args, me: SocketAddr, c: &Call) -> String {
    format!(
        "ACK sip:bot@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{:x};rport\r\nMax-Forwards: 70\r\nFrom: <sip:loadgen@{ip}>;tag={}\r\nTo: <sip:bot@{t}>;tag={}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        rnd(),
        c.from_tag,
        c.to_tag.as_deref().unwrap_or(""),
        c.call_id,
        t = a.target,
        ip = me.ip()
    )
}

fn bye_msg(a: &Args, me: SocketAddr, c: &Call) -> String {
    format!(
        "BYE sip:bot@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={};rport\r\nMax-Forwards: 70\r\nFrom: <sip:loadgen@{ip}>;tag={}\r\nTo: <sip:bot@{t}>;tag={}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        c.branch,
        c.from_tag,
        c.to_tag.as_deref().unwrap_or(""),
        c.call_id,
        t = a.target,
        ip = me.ip()
    )
}

fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split("\r\n")
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
}

fn on_sip(
    a: &Args,
    sip: &UdpSocket,
    me: SocketAddr,
    text: &str,
    calls: &mut [Call],
    by_id: &HashMap<String, usize>,
    setup: &mut Vec<f64>,
) {
    let Some(call_id) = header(text, "Call-ID").or_else(|| header(text, "i")) else {
        return;
    };
    let Some(&i) = by_id.get(call_id) else { return };
    let c = &mut calls[i];
    if !text.starts_with("SIP/2.0 ") {
        // A request from the gateway (its BYE at the end of a flow): answer 200.
        if let Some(via) = header(text, "Via") {
            let resp = format!(
                "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
                header(text, "From").unwrap_or(""),
                header(text, "To").unwrap_or(""),
                header(text, "CSeq").unwrap_or("")
            );
            sip.send_to(resp.as_bytes(), a.target).ok();
            if text.starts_with("BYE ") {
                c.phase = Phase::Done;
            }
        }
        return;
    }
    let status: u16 = text.get(8..11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let cseq = header(text, "CSeq").unwrap_or("");
    if cseq.ends_with("INVITE") {
        if status >= 200 && c.to_tag.is_none() {
            c.to_tag = header(text, "To")
                .and_then(|t| t.split(";tag=").nth(1))
                .map(|t| t.split(';').next().unwrap_or(t).to_string());
        }
        if (200..300).contains(&status) {
            if c.phase == Phase::Inviting {
                c.phase = Phase::Media;
                let now = Instant::now();
                c.answered_at = Some(now);
                setup.push((now - c.invited_at).as_secs_f64() * 1000.0);
                c.remote_rtp = sdp_media(text);
            }
            sip.send_to(ack_msg(a, me, c).as_bytes(), a.target).ok();
        } else if status >= 300 && c.phase == Phase::Inviting {
            sip.send_to(ack_msg(a, me, c).as_bytes(), a.target).ok();
            c.phase = Phase::Failed;
        } else if status >= 100 && c.phase == Phase::Inviting {
            // Provisional: stop retransmitting (timer B still bounds the wait).
            c.tries = c.tries.max(1);
            c.last_tx = Instant::now() + Duration::from_secs(30);
        }
    } else if cseq.ends_with("BYE") && status >= 200 && c.phase == Phase::Byeing {
        c.phase = Phase::Done;
    }
}

/// Whether an RTP packet's payload carries anything but G.711 silence (μ-law 0xFF/0x7F,
/// A-law 0xD5/0x55: the codes of a zero sample). Telephone-events (PT 101) do not count.
fn has_sound(pkt: &[u8]) -> bool {
    let pt = pkt[1] & 0x7F;
    let start = 12 + 4 * usize::from(pkt[0] & 0x0F);
    if !matches!(pt, 0 | 8) || pkt.len() <= start {
        return false;
    }
    let quiet: [u8; 2] = if pt == 0 { [0xFF, 0x7F] } else { [0xD5, 0x55] };
    pkt[start..].iter().any(|b| !quiet.contains(b))
}

fn sdp_media(text: &str) -> Option<SocketAddr> {
    let body = text.split("\r\n\r\n").nth(1)?;
    let ip = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim()
        .parse()
        .ok()?;
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port))
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn enable_timestamps(s: &UdpSocket) {
    let on: libc::c_int = 1;
    // SAFETY: SO_TIMESTAMPNS takes an int option value; we pass a pointer to one.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// An even RTP port on `ip` and the odd RTCP port after it, both bound, as a real endpoint
/// holds them (RFC 3550 §11).
fn bind_pair(ip: IpAddr) -> io::Result<(UdpSocket, UdpSocket)> {
    for _ in 0..256 {
        let rtp = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(ip, port + 1)) {
            return Ok((rtp, rtcp));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free even/odd port pair for RTP and RTCP",
    ))
}

/// RTP, not RTCP (payload types 72–95 are RTCP's packet types 200–223 seen as RTP, RFC 5761).
fn is_rtp(pkt: &[u8]) -> bool {
    pkt[0] >> 6 == 2 && !(72..=95).contains(&(pkt[1] & 0x7F))
}

/// One datagram, where it came from and its kernel receive time (CLOCK_REALTIME, ns).
fn recv_stamped(
    s: &UdpSocket,
    buf: &mut [u8],
) -> Option<(usize, Option<SocketAddr>, Option<i128>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: sockaddr_storage is plain old data; zero is valid.
    let mut from: libc::sockaddr_storage = unsafe { mem::zeroed() };
    // SAFETY: msghdr is plain old data; zero is valid. Pointers set below refer to locals
    // that outlive the recvmsg call.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control);
    // SAFETY: msg points at valid buffers for the duration of the call; non-blocking.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    let mut ts = None;
    // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(&msg);
        while !cm.is_null() {
            if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast());
                ts = Some(t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128);
            }
            cm = libc::CMSG_NXTHDR(&msg, cm);
        }
    }
    Some((
        n as usize,
        voxgate::media::plane::io::from_storage(&from),
        ts,
    ))
}

struct Epoll {
    fd: i32,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
        })
    }
    fn add(&self, fd: i32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: ev is valid for the call.
        if unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    fn wait(&mut self, timeout: Duration) -> io::Result<Vec<u64>> {
        // Round up: a sub-millisecond wait must not spin.
        let ms = timeout.as_micros().div_ceil(1000).min(1000) as i32;
        // SAFETY: events has len() writable slots.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
        Ok(self.events[..n as usize].iter().map(|e| e.u64).collect())
    }
}
