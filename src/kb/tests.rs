use super::passages::split;
use super::*;

const HOURS: &str = "# Opening hours\n\nWe are open:\n\n- Monday to Friday: 9:00 to 17:30\n- Saturday: 10:00 to 14:00\n\nClosed on Sundays and public holidays.\n";
const RETURNS: &str = "---\ntitle: Returns\n---\n# Returns and refunds\n\nYou can return any product within **30 days** of delivery for a full [refund](https://example.com/refund).\n\n## Shipping costs\n\nReturn shipping is free for orders over 50 euro.\n\n```\ncode is not spoken\n```\n";
const SUPPORT: &str = "Support\n=======\n\nOur support team answers the phone around the clock. Call support for help with your router, your internet connection or your password.\n";

fn kb() -> KnowledgeBase {
    KnowledgeBase::build(vec![
        ("hours.md".into(), HOURS.into()),
        ("returns.md".into(), RETURNS.into()),
        ("faq/support.txt".into(), SUPPORT.into()),
    ])
}

#[test]
fn markdown_becomes_plain_passages_under_headings() {
    let p = split("hours.md", HOURS);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].heading, "Opening hours");
    assert_eq!(
        p[0].text,
        "We are open: Monday to Friday: 9:00 to 17:30. Saturday: 10:00 to 14:00."
    );
    let r = split("returns.md", RETURNS);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(
        r[0].text,
        "You can return any product within 30 days of delivery for a full refund."
    );
    assert_eq!(r[1].heading, "Returns and refunds > Shipping costs");
    let s = split("support.txt", SUPPORT);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].heading, "Support");
}

#[test]
fn long_paragraphs_are_cut_at_sentences() {
    let long = "This sentence is about routers and modems. ".repeat(40);
    let p = split("long.md", &long);
    assert!(p.len() >= 3, "{}", p.len());
    assert!(p.iter().all(|x| x.text.chars().count() <= 650));
    assert!(p.iter().all(|x| x.text.ends_with('.')));
}

#[test]
fn questions_find_the_right_document() {
    let kb = kb();
    assert_eq!(kb.documents(), 3);
    let a = kb.answer("What are your opening hours?", None, 0.5);
    assert_eq!(a.source.as_deref(), Some("hours.md"), "{a:?}");
    assert!(a.answer.as_deref().unwrap().contains("Monday to Friday"));
    let a = kb.answer("can I return a product", None, 0.5);
    assert_eq!(a.source.as_deref(), Some("returns.md"));
    assert!(a.answer.unwrap().contains("30 days"));
    let a = kb.answer("how much does return shipping cost", None, 0.5);
    assert!(a.answer.unwrap().contains("free for orders"));
    let a = kb.answer("my internet connection is down", None, 0.5);
    assert_eq!(a.source.as_deref(), Some("faq/support.txt"));
}

#[test]
fn nothing_above_min_score_is_no_answer() {
    let kb = kb();
    let a = kb.answer("zebra giraffe", None, 0.5);
    assert_eq!(
        a,
        Answer {
            answer: None,
            source: None,
            score: 0.0
        }
    );
    let best = kb.answer("opening hours", None, 0.0).score;
    assert!(best > 0.0);
    let a = kb.answer("opening hours", None, best + 1.0);
    assert_eq!(a.answer, None);
    assert_eq!(a.score, best, "the best score is still reported");
    // Stop words alone match nothing.
    assert_eq!(kb.answer("what are your", None, 0.0).answer, None);
    assert_eq!(
        a.to_json(),
        serde_json::json!({"answer": null, "source": null, "score": best})
    );
}

#[test]
fn source_restricts_the_search() {
    let kb = kb();
    for s in ["returns.md", "returns"] {
        let a = kb.answer("opening hours and refunds", Some(s), 0.0);
        assert_eq!(a.source.as_deref(), Some("returns.md"), "{s}");
    }
    let a = kb.answer("support", Some("support"), 0.0);
    assert_eq!(a.source.as_deref(), Some("faq/support.txt"));
    assert_eq!(
        kb.answer("opening hours", Some("nope.md"), 0.0).answer,
        None
    );
}

#[test]
fn folder_load_skips_bad_files_and_reload_swaps() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hours.md"), HOURS).unwrap();
    std::fs::write(dir.path().join("binary.txt"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
    std::fs::write(dir.path().join("image.png"), b"not indexed").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/returns.markdown"), RETURNS).unwrap();
    let report = load_dir(dir.path()).unwrap();
    assert_eq!(report.kb.documents(), 2);
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert!(report.skipped[0].1.contains("UTF-8"));
    let handle = KbHandle::new(dir.path().to_path_buf(), report.kb);
    assert_eq!(
        handle.get().answer("refund", None, 0.1).source.as_deref(),
        Some("sub/returns.markdown")
    );
    std::fs::write(dir.path().join("support.md"), SUPPORT).unwrap();
    let old = handle.get();
    handle.reload().unwrap();
    assert_eq!(handle.get().documents(), 3);
    assert_eq!(old.documents(), 2, "a query in flight keeps its index");
    assert!(load_dir(&dir.path().join("missing")).is_err());
}

/// Not a test: the figures docs/speech.md compares with tantivy (same documents, same 500x
/// synthetic scale). Run: cargo test --release --lib kb::tests::measure -- --ignored --nocapture
#[test]
#[ignore]
fn measure() {
    let dir = crate::config::Config::default().knowledge_base.dir;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let base = load_dir(&root).unwrap().kb;
    let mut docs = Vec::new();
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        docs.push((
            p.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read_to_string(&p).unwrap(),
        ));
    }
    let questions = [
        "what are your opening hours",
        "how can i return a product",
        "where are you located",
        "my internet connection is down",
    ];
    for reps in [1usize, 500] {
        let mut all = Vec::new();
        for r in 0..reps {
            for (n, t) in &docs {
                all.push((
                    if r == 0 {
                        n.clone()
                    } else {
                        format!("r{r}/{n}")
                    },
                    t.clone(),
                ));
            }
        }
        let t0 = std::time::Instant::now();
        let kb = KnowledgeBase::build(all);
        let build = t0.elapsed();
        let t1 = std::time::Instant::now();
        for _ in 0..200 {
            for q in questions {
                std::hint::black_box(kb.answer(q, None, 1.0));
            }
        }
        let per_query = t1.elapsed() / (200 * questions.len() as u32);
        println!(
            "passages {} build {build:?} per-query {per_query:?}",
            kb.passages()
        );
        if reps == 1 {
            for q in questions {
                let a = base.answer(q, None, 1.0);
                println!("{q} -> {:?} ({})", a.source, a.score);
            }
        }
    }
}
