//! The knowledge base behind the `knowledge_base` step: a folder of Markdown or text documents,
//! cut into passages (a paragraph, list or table under its headings) and ranked with BM25
//! (k1 = 1.2, b = 0.75) over English-stemmed words without stop words. The best passage whose
//! score reaches the step's `min_score` is the answer.
//!
//! Built once at start-up and again on SIGHUP, off the async workers; a [`KbHandle`] swaps the
//! new index in whole, so a query sees either the old or the new documents, never a mix.
//! docs/speech.md explains why this is BM25 of our own rather than tantivy.

mod executor;
mod index;
mod passages;

pub use executor::KbExecutor;

pub use index::{Answer, KnowledgeBase};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Files larger than this are skipped (with a warning): a knowledge base is prose, not data.
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;
/// At most this many documents are indexed.
pub const MAX_FILES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum KbError {
    #[error("knowledge base {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a load found: the index and the files it had to leave out (with the reason).
#[derive(Debug)]
pub struct LoadReport {
    pub kb: KnowledgeBase,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Reads every `.md`, `.markdown` and `.txt` file under `dir` (recursively, sorted by path).
/// A missing or unreadable directory is an error; a bad file is skipped and reported.
pub fn load_dir(dir: &Path) -> Result<LoadReport, KbError> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files, 0)?;
    files.sort();
    let mut skipped = Vec::new();
    let mut docs = Vec::new();
    for path in files {
        if docs.len() >= MAX_FILES {
            skipped.push((path, format!("more than {MAX_FILES} documents")));
            continue;
        }
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                skipped.push((path, e.to_string()));
                continue;
            }
        };
        if meta.len() > MAX_FILE_BYTES {
            skipped.push((path, format!("larger than {MAX_FILE_BYTES} bytes")));
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    let name = path
                        .strip_prefix(dir)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .into_owned();
                    docs.push((name, text));
                }
                Err(_) => skipped.push((path, "not UTF-8 text".into())),
            },
            Err(e) => skipped.push((path, e.to_string())),
        }
    }
    Ok(LoadReport {
        kb: KnowledgeBase::build(docs),
        skipped,
    })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>, depth: u32) -> Result<(), KbError> {
    let entries = std::fs::read_dir(dir).map_err(|source| KbError::Dir {
        dir: root.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        // Symlinked directories are not followed (no loops); hidden entries are ignored.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if kind.is_dir() {
            if depth < 8 {
                collect(root, &path, out, depth + 1)?;
            }
        } else if matches!(
            path.extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("md" | "markdown" | "txt")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// The current index, shared by every call; replaced whole on reload.
#[derive(Debug, Clone)]
pub struct KbHandle {
    dir: PathBuf,
    current: Arc<RwLock<Arc<KnowledgeBase>>>,
}

impl KbHandle {
    pub fn new(dir: PathBuf, kb: KnowledgeBase) -> Self {
        KbHandle {
            dir,
            current: Arc::new(RwLock::new(Arc::new(kb))),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self) -> Arc<KnowledgeBase> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the folder (blocking: call from a blocking thread) and swaps the new index in.
    /// On error the old index stays.
    pub fn reload(&self) -> Result<LoadReport, KbError> {
        let report = load_dir(&self.dir)?;
        let fresh = Arc::new(report.kb.clone());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
