//! BM25 over passages.

use super::passages::{self, Passage};
use rust_stemmers::{Algorithm, Stemmer};
use std::collections::HashMap;

const K1: f64 = 1.2;
const B: f64 = 0.75;

/// English words that say nothing about which passage answers a question.
const STOP_WORDS: &[&str] = &[
    "a", "about", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can", "could",
    "did", "do", "does", "for", "from", "get", "had", "has", "have", "he", "her", "here", "his",
    "how", "i", "if", "in", "into", "is", "it", "its", "just", "like", "may", "me", "might", "my",
    "need", "no", "not", "of", "on", "or", "our", "please", "she", "should", "so", "some", "tell",
    "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those",
    "to", "up", "us", "was", "we", "were", "what", "when", "where", "which", "who", "why", "will",
    "with", "would", "you", "your", "yours",
];

/// The index. Immutable once built; cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct KnowledgeBase {
    passages: Vec<Passage>,
    /// Word stem -> (passage, term frequency).
    postings: HashMap<String, Vec<(u32, u32)>>,
    /// Indexed words per passage.
    lens: Vec<u32>,
    avg_len: f64,
    documents: usize,
}

/// The `knowledge_base` step's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub answer: Option<String>,
    pub source: Option<String>,
    /// The best passage's score (also when it is below `min_score`; 0 when nothing matched).
    pub score: f64,
}

impl Answer {
    /// `{"answer": …, "source": …, "score": …}` as `StepRequest::KnowledgeBase` documents.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "answer": self.answer,
            "source": self.source,
            "score": self.score,
        })
    }
}

fn stemmer() -> Stemmer {
    Stemmer::create(Algorithm::English)
}

/// Lower-case words (letters and digits), stop words removed, stemmed.
fn terms(stemmer: &Stemmer, text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .map(|w| stemmer.stem(&w).into_owned())
        .collect()
}

impl KnowledgeBase {
    /// Indexes `(name, text)` documents.
    pub fn build(docs: Vec<(String, String)>) -> Self {
        let stemmer = stemmer();
        let documents = docs.len();
        let mut passages = Vec::new();
        for (name, text) in &docs {
            passages.extend(passages::split(name, text));
        }
        let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        let mut lens = Vec::with_capacity(passages.len());
        for (i, p) in passages.iter().enumerate() {
            let mut tf: HashMap<String, u32> = HashMap::new();
            // The headings count as part of a section's first passage: "Opening hours" above
            // a list of days is what makes the list the answer to "what are your opening
            // hours". Later passages of the section do not get them, or the shortest passage
            // under a matching heading would win on length alone.
            let lead = i == 0
                || passages[i - 1].source != p.source
                || passages[i - 1].heading != p.heading;
            let words = if lead {
                terms(&stemmer, &format!("{} {}", p.heading, p.text))
            } else {
                terms(&stemmer, &p.text)
            };
            lens.push(words.len() as u32);
            for w in words {
                *tf.entry(w).or_default() += 1;
            }
            for (w, n) in tf {
                postings.entry(w).or_default().push((i as u32, n));
            }
        }
        let avg_len = if lens.is_empty() {
            0.0
        } else {
            lens.iter().map(|&l| f64::from(l)).sum::<f64>() / lens.len() as f64
        };
        KnowledgeBase {
            passages,
            postings,
            lens,
            avg_len,
            documents,
        }
    }

    pub fn documents(&self) -> usize {
        self.documents
    }

    pub fn passages(&self) -> usize {
        self.passages.len()
    }

    /// BM25 scores of every passage that shares a word with the question, best first.
    /// `source` keeps only passages of that document (its path, file name, or name without
    /// extension).
    pub fn search(&self, question: &str, source: Option<&str>) -> Vec<(usize, f64)> {
        let stemmer = stemmer();
        let mut q = terms(&stemmer, question);
        q.sort();
        q.dedup();
        let n = self.passages.len() as f64;
        let mut scores: HashMap<u32, f64> = HashMap::new();
        for term in &q {
            let Some(list) = self.postings.get(term) else {
                continue;
            };
            let df = list.len() as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(p, tf) in list {
                let len = f64::from(self.lens[p as usize]);
                let tf = f64::from(tf);
                let s =
                    idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / self.avg_len.max(1.0)));
                *scores.entry(p).or_default() += s;
            }
        }
        let mut ranked: Vec<(usize, f64)> = scores
            .into_iter()
            .map(|(p, s)| (p as usize, s))
            .filter(|(p, _)| source.is_none_or(|s| source_matches(&self.passages[*p].source, s)))
            .collect();
        // Ties go to the earlier passage, so results do not depend on hash order.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked
    }

    /// The best passage if it scores at least `min_score`.
    pub fn answer(&self, question: &str, source: Option<&str>, min_score: f64) -> Answer {
        let best = self.search(question, source).into_iter().next();
        match best {
            Some((p, score)) if score >= min_score && score > 0.0 => {
                let passage = &self.passages[p];
                Answer {
                    answer: Some(passage.text.clone()),
                    source: Some(passage.source.clone()),
                    score: round3(score),
                }
            }
            other => Answer {
                answer: None,
                source: None,
                score: other.map_or(0.0, |(_, s)| round3(s)),
            },
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn source_matches(path: &str, wanted: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    path == wanted || file == wanted || stem == wanted
}
