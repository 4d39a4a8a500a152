//! Speech in (issue 13), end to end: the real `voxgate` binary runs the shipped voicebot flow
//! (`sip-config/flows/voicebot.yaml`) and knowledge base (`sip-config/kb/`) with PocketSphinx,
//! and SIPp calls it, speaking utterances generated here with espeak-ng and converted to
//! G.711 μ-law by sox (sent with `rtp_stream` of the raw file).
//!
//! What is proved:
//! - a spoken menu word ("billing") reaches its dialog, with the recognised text and confidence,
//!   and the call's transcript (`GET /v1/calls/{id}/transcript`) has it as a `speech` entry
//!   after the bot's prompt;
//! - a spoken question gets the passage from the right document of the knowledge base (the
//!   `knowledge_base` step answered through the KB executor chained before the integrations,
//!   and recorded in the transcript);
//! - silence ends the listen at `timeout_ms` (6 s in the voicebot flow) and goes to
//!   `on_timeout`;
//! - an unknown word and noise go to `on_no_match`;
//! - a key pressed while the caller is speaking wins over the speech;
//! - without the recogniser's model (as without libpocketsphinx) the gateway still starts,
//!   says why once at start-up, and the voicebot falls back to keys with `heard.error`.
//!
//! Which dialog was reached is read from the flow's tracked `voicebot` events (`/v1/events`).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// espeak-ng speech -> 8 kHz μ-law raw (sox), with 1.5 s of silence after it so the VAD sees
/// the end of the utterance while RTP still flows.
fn speak(dir: &Path, name: &str, voice: &str, text: &str) -> PathBuf {
    let wav = dir.join(format!("{name}.wav"));
    let out = dir.join(format!("{name}.ulaw"));
    let st = Command::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng (apt-get install espeak-ng)");
    assert!(st.success(), "espeak-ng failed");
    sox_ulaw(&[wav.to_str().unwrap()], &out, &["pad", "0", "1.5"]);
    out
}

/// `sox <input...> -r 8000 -c 1 -e mu-law -t raw <out> <effects...>`.
fn sox_ulaw(input: &[&str], out: &Path, effects: &[&str]) {
    let st = Command::new("sox")
        .args(input)
        .args(["-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw"])
        .arg(out)
        .args(effects)
        .status()
        .expect("sox (apt-get install sox)");
    assert!(st.success(), "sox failed");
}

/// A generated signal (`sox -n ... synth`), as μ-law.
fn synth(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(format!("{name}.ulaw"));
    let mut input = vec!["-n"];
    input.extend_from_slice(&["-r", "8000", "-c", "1"]);
    let st = Command::new("sox")
        .args(&input)
        .args(["-e", "mu-law", "-t", "raw"])
        .arg(&out)
        .arg("synth")
        .args(args)
        .status()
        .expect("sox");
    assert!(st.success(), "sox synth failed");
    out
}

/// Fills in tests/sipp/speech_caller.xml.
fn scenario(dir: &Path, audio: &Path, speak_at_ms: u64, key: Option<(u64, char)>) -> PathBuf {
    let template = std::fs::read_to_string(sipp_dir().join("speech_caller.xml"))
        .expect("tests/sipp/speech_caller.xml");
    let key_block = match key {
        None => String::new(),
        Some((after_ms, digit)) => format!(
            r#"  <pause milliseconds="{after_ms}"/>
  <nop><action><log message="[call_id] key sent clock_ms=[clock_tick]"/></action></nop>
  <send retrans="500">
    <![CDATA[

      INFO [$remote_contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: "SIPp speech caller" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 INFO
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Content-Type: application/dtmf-relay
      Content-Length: [len]

      Signal={digit}
      Duration=160

    ]]>
  </send>
  <recv response="200" timeout="5000"/>
"#
        ),
    };
    let xml = template
        .replace("@AUDIO@", audio.to_str().unwrap())
        .replace("@SPEAK_AT_MS@", &speak_at_ms.to_string())
        .replace("@KEY_BLOCK@", &key_block)
        .replace("@BYE_WAIT_MS@", "20000");
    let path = dir.join("speech_caller.xml");
    std::fs::write(&path, xml).unwrap();
    path
}

/// The shipped voicebot flow (prompts dir made absolute) and knowledge base.
fn voicebot() -> Gateway {
    let flow = std::fs::read_to_string(repo_root().join("sip-config/flows/voicebot.yaml"))
        .expect("read the voicebot flow");
    assert!(
        flow.contains("\nprompts_dir: ../prompts\n") && flow.contains("timeout_ms: 6000"),
        "the voicebot flow changed shape; update tests/speech.rs"
    );
    let flow = flow.replace(
        "\nprompts_dir: ../prompts\n",
        "\nprompts_dir: \"{{PROMPTS_DIR}}\"\n",
    );
    let kb = repo_root().join("sip-config/kb");
    Gateway::builder()
        .flow_yaml(&flow)
        .toml(&format!(
            "[speech]\nengine = \"pocketsphinx\"\npool_size = 2\n[knowledge_base]\ndir = {:?}\n",
            kb.display().to_string()
        ))
        .start()
}

/// Runs one call and returns the flow's `voicebot` events' properties, oldest first.
fn call(gw: &Gateway, scenario: &Path) -> (Vec<Value>, SippOutcome) {
    let out = Sipp::uac(scenario.to_str().unwrap(), gw.sip_addr())
        .timeout_s(60)
        .run();
    let body = gw
        .get("/v1/events?name=voicebot")
        .expect("GET /v1/events")
        .json();
    let mut events: Vec<Value> = body["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["properties"].clone())
        .collect();
    events.reverse();
    (events, out)
}

fn report(gw: &Gateway, out: &SippOutcome, events: &[Value]) -> String {
    format!(
        "events: {events:#?}\n--- gateway log (speech) ---\n{}\n--- SIPp ---\n{}",
        gw.log_lines("speech")
            .into_iter()
            .chain(gw.log_lines("listen"))
            .collect::<Vec<_>>()
            .join("\n"),
        out.logs
    )
}

fn require_tools() {
    require_sipp();
    for tool in ["espeak-ng", "sox"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is missing: run scripts/test.sh (it installs the test tools)"
        );
    }
}

#[test]
fn a_spoken_menu_word_reaches_its_dialog() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    // "billing" is heard with confidence 0.95 to 0.99 in the en-us, en-us+f3 and en-gb voices;
    // "sales" only at 0.1 to 0.49 (below min_confidence) in six voices (docs/speech.md).
    let audio = speak(tmp.path(), "billing", "en-us", "billing");
    let gw = voicebot();
    let (events, out) = call(&gw, &scenario(tmp.path(), &audio, 1500, None));
    out.assert_success();
    assert_eq!(events.len(), 1, "{}", report(&gw, &out, &events));
    let e = &events[0];
    assert_eq!(e["dialog"], "billing", "{}", report(&gw, &out, &events));
    assert_eq!(e["input"], "speech");
    assert_eq!(e["text"], "billing");
    let conf = e["confidence"].as_f64().unwrap_or(-1.0);
    assert!((0.5..=1.0).contains(&conf), "confidence {conf}");
    assert!(gw.log_contains("speech heard"), "{}", gw.log_tail(40));

    // The transcript: what the bot played, then what the caller said, with its confidence.
    let t = transcript(&gw);
    let entries = t["entries"].as_array().cloned().unwrap_or_default();
    let heard = entries
        .iter()
        .position(|e| e["kind"] == "speech")
        .unwrap_or_else(|| panic!("no speech entry: {t:#}"));
    let e = &entries[heard];
    assert_eq!(e["text"], "billing", "{t:#}");
    assert_eq!(e["matched"], true, "{t:#}");
    let conf = e["confidence"].as_f64().unwrap_or(-1.0);
    assert!(
        (0.5..=1.0).contains(&conf),
        "transcript confidence {conf}: {t:#}"
    );
    assert!(e["at"].is_string() && e["offset_ms"].is_u64(), "{t:#}");
    assert!(
        entries[..heard]
            .iter()
            .any(|e| e["kind"] == "prompt" || e["kind"] == "say"),
        "the bot's prompt should come before the speech: {t:#}"
    );
}

/// The last call's transcript, read after the call through the HTTP API.
fn transcript(gw: &Gateway) -> Value {
    // The CDR is written as the call ends, just after SIPp sees the BYE answered.
    let mut call_id = None;
    for _ in 0..50 {
        let cdrs = gw.get("/v1/cdrs?limit=1").expect("GET /v1/cdrs").json();
        if let Some(id) = cdrs["cdrs"][0]["call_id"].as_str() {
            call_id = Some(id.to_string());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let call_id = call_id.unwrap_or_else(|| panic!("no CDR: {}", gw.log_tail(40)));
    let t = gw
        .get(&format!("/v1/calls/{call_id}/transcript"))
        .expect("GET the transcript")
        .json();
    assert_eq!(t["call_id"], call_id.as_str(), "{t:#}");
    t
}

#[test]
fn a_spoken_question_gets_the_passage_from_the_right_document() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let audio = speak(tmp.path(), "hours", "en-us", "what are your opening hours");
    let gw = voicebot();
    let (events, out) = call(&gw, &scenario(tmp.path(), &audio, 1500, None));
    out.assert_success();
    let q = events
        .iter()
        .find(|e| e["dialog"] == "question")
        .unwrap_or_else(|| panic!("no answer: {}", report(&gw, &out, &events)));
    assert_eq!(q["text"], "what are your opening hours");
    assert_eq!(q["source"], "hours.md", "{q:#}");
    let answer = q["answer"].as_str().unwrap_or("");
    assert!(answer.contains("Monday to Friday"), "{answer}");
    assert!(q["score"].as_f64().unwrap_or(0.0) >= 1.0, "{q:#}");
    // The question and the answer's origin are in the transcript.
    let t = transcript(&gw);
    let entries = t["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "speech" && e["text"] == "what are your opening hours"),
        "{t:#}"
    );
    assert!(
        entries.iter().any(|e| e["kind"] == "step"
            && e["step"] == "knowledge_base"
            && e["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("answered from hours.md"))),
        "{t:#}"
    );
}

#[test]
fn silence_ends_the_listen_at_timeout_ms() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    // 9 s of digital silence keeps RTP flowing past the 6 s timeout.
    let audio = synth(tmp.path(), "silence", &["9", "sine", "440", "vol", "0"]);
    let gw = voicebot();
    let (events, out) = call(&gw, &scenario(tmp.path(), &audio, 0, None));
    out.assert_success();
    assert_eq!(
        events.first().map(|e| e["dialog"].clone()),
        Some(Value::from("no_input")),
        "{}",
        report(&gw, &out, &events)
    );
    // From the listen to the recogniser's timeout, by the gateway's own log stamps.
    let start = log_time(&gw, "listening");
    let end = log_time(&gw, "no speech before the timeout");
    let took = end - start;
    assert!(
        (5_900..=7_000).contains(&took.num_milliseconds()),
        "timeout after {} ms, want ~6000",
        took.num_milliseconds()
    );
}

#[test]
fn an_unknown_word_and_noise_go_to_on_no_match() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let word = speak(tmp.path(), "weather", "en-us", "weather");
    let noise = synth(
        tmp.path(),
        "noise",
        &["1.2", "pinknoise", "vol", "0.3", "pad", "0", "1.5"],
    );
    // Both in one call: the flow goes back to the menu after a no-match.
    let both = tmp.path().join("both.ulaw");
    let mut bytes = std::fs::read(&word).unwrap();
    bytes.extend(std::fs::read(&noise).unwrap());
    std::fs::write(&both, bytes).unwrap();
    let gw = voicebot();
    let (events, out) = call(&gw, &scenario(tmp.path(), &both, 1500, None));
    let dialogs: Vec<&str> = events.iter().filter_map(|e| e["dialog"].as_str()).collect();
    assert!(
        dialogs.len() >= 2 && dialogs[..2] == ["not_understood", "not_understood"],
        "{}",
        report(&gw, &out, &events)
    );
}

#[test]
fn a_key_pressed_while_speaking_wins() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let audio = speak(tmp.path(), "sales", "en-us+f3", "sales");
    let gw = voicebot();
    // "2" (support) 100 ms into the spoken "sales".
    let (events, out) = call(&gw, &scenario(tmp.path(), &audio, 1500, Some((100, '2'))));
    out.assert_success();
    assert_eq!(events.len(), 1, "{}", report(&gw, &out, &events));
    assert_eq!(
        events[0]["dialog"],
        "support",
        "{}",
        report(&gw, &out, &events)
    );
    assert_eq!(events[0]["input"], "dtmf");
}

#[test]
fn without_a_model_the_gateway_starts_and_listen_falls_back_to_keys() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let flow = std::fs::read_to_string(repo_root().join("sip-config/flows/voicebot.yaml"))
        .expect("read the voicebot flow")
        .replace(
            "\nprompts_dir: ../prompts\n",
            "\nprompts_dir: \"{{PROMPTS_DIR}}\"\n",
        );
    let missing = tmp.path().join("no-model");
    let gw = Gateway::builder()
        .flow_yaml(&flow)
        .toml(&format!(
            "[speech]\nengine = \"pocketsphinx\"\nmodel_dir = {:?}\n",
            missing.display().to_string()
        ))
        .start();
    // One clear warning at start-up, naming what to install.
    let warnings = || -> Vec<String> {
        gw.log_lines("speech recognition is unavailable")
            .iter()
            .map(|l| strip_ansi(l))
            .filter(|l| l.contains("WARN"))
            .collect()
    };
    let warned = warnings();
    assert_eq!(warned.len(), 1, "{}", gw.log_tail(40));
    assert!(warned[0].contains("pocketsphinx-en-us"), "{}", warned[0]);
    // 9 s of silence: the listen fails over to keys at once, its timeout sends the flow to
    // no_input, which sees heard.error and goes keys-only.
    let audio = synth(tmp.path(), "silence", &["9", "sine", "440", "vol", "0"]);
    let (events, out) = call(&gw, &scenario(tmp.path(), &audio, 0, None));
    out.assert_success();
    let first = events
        .first()
        .unwrap_or_else(|| panic!("no event: {}", report(&gw, &out, &events)));
    assert_eq!(
        first["dialog"],
        "keypad_only",
        "{}",
        report(&gw, &out, &events)
    );
    assert_eq!(first["why"], "unavailable", "{first:#}");
    // Still the one warning: calls do not repeat it.
    assert_eq!(warnings().len(), 1, "{:#?}", warnings());
}

/// The time stamp of the first gateway log line containing `pattern`.
fn log_time(gw: &Gateway, pattern: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let line = gw
        .log_lines(pattern)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no log line with {pattern:?}:\n{}", gw.log_tail(40)));
    let stamp = strip_ansi(&line)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    chrono::DateTime::parse_from_rfc3339(&stamp)
        .unwrap_or_else(|e| panic!("no time stamp in {line:?}: {e}"))
}

fn rss_kib(gw: &Gateway) -> u64 {
    let pid = gw.pid().expect("gateway pid");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A gateway whose flow never listens does not load the recognisers (each holds its model);
/// the first reloaded flow with a `listen` loads them, and its calls are heard.
#[test]
fn recognisers_load_only_once_a_flow_listens() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let keys_only = "name: keys\nstart: main\nprompts_dir: \"{{PROMPTS_DIR}}\"\ndialogs:\n  main:\n    \
                     - collect: {max_digits: 1, timeout_ms: 60000, default: main, on_timeout: main}\n";
    let kb = repo_root().join("sip-config/kb");
    let gw = Gateway::builder()
        .flow_yaml(keys_only)
        .toml(&format!(
            "[speech]\nengine = \"pocketsphinx\"\npool_size = 2\n[knowledge_base]\ndir = {:?}\n",
            kb.display().to_string()
        ))
        .start();
    assert!(
        gw.log_contains("speech recognition not loaded"),
        "{}",
        gw.log_tail(30)
    );
    assert!(!gw.log_contains("speech recognition ready"));
    let before = rss_kib(&gw);

    // The voicebot flow on disk, then SIGHUP: the recognisers load in the background.
    let flow = std::fs::read_to_string(repo_root().join("sip-config/flows/voicebot.yaml"))
        .expect("read the voicebot flow");
    let prompts = std::fs::read_to_string(gw.dir().join("flow.yaml"))
        .ok()
        .and_then(|f| {
            f.lines()
                .find(|l| l.starts_with("prompts_dir:"))
                .map(str::to_string)
        })
        .expect("the harness wrote prompts_dir");
    let flow = flow.replace("\nprompts_dir: ../prompts\n", &format!("\n{prompts}\n"));
    std::fs::write(gw.dir().join("flow.yaml"), flow).unwrap();
    let pid = gw.pid().expect("gateway pid");
    assert!(Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    assert!(
        gw.wait_for_log(
            "speech recognition ready",
            std::time::Duration::from_secs(60)
        ),
        "{}",
        gw.log_tail(30)
    );
    let after = rss_kib(&gw);
    eprintln!("RSS before the recognisers: {before} KiB, after: {after} KiB");
    assert!(
        after > before + 20 * 1024,
        "two recognisers should hold their models ({before} -> {after} KiB)"
    );

    let audio = speak(tmp.path(), "billing", "en-us", "billing");
    let (events, out) = call(&gw, &scenario(tmp.path(), &audio, 1500, None));
    out.assert_success();
    assert_eq!(
        events.first().map(|e| e["dialog"].clone()),
        Some(Value::from("billing")),
        "{}",
        report(&gw, &out, &events)
    );
}
