//! Markdown (or plain text) to passages: the unit an answer is made of. A passage is one
//! paragraph, list, table or quote, with the headings above it; inline markup is removed so
//! the text can be spoken.

/// One answerable piece of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    /// The document's path inside the knowledge base folder.
    pub source: String,
    /// The headings above it, outermost first, joined by " > " (empty for none).
    pub heading: String,
    /// The passage as plain text.
    pub text: String,
}

/// Passages longer than this are cut at sentence ends.
const MAX_PASSAGE_CHARS: usize = 600;

/// Cuts a document into passages.
pub fn split(source: &str, doc: &str) -> Vec<Passage> {
    let mut out = Vec::new();
    let mut headings: Vec<(usize, String)> = Vec::new();
    let mut para: Vec<String> = Vec::new();
    let mut in_fence = false;
    let mut front_matter = false;
    for (i, raw) in doc.lines().enumerate() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if i == 0 && trimmed == "---" {
            front_matter = true;
            continue;
        }
        if front_matter {
            if trimmed == "---" {
                front_matter = false;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            flush(source, &headings, &mut para, &mut out);
            continue;
        }
        if in_fence {
            // Code is not spoken; it is not indexed either.
            continue;
        }
        if let Some((level, title)) = heading(trimmed) {
            flush(source, &headings, &mut para, &mut out);
            headings.retain(|(l, _)| *l < level);
            headings.push((level, inline(title)));
            continue;
        }
        if trimmed.is_empty() || is_rule(trimmed) {
            // "We are open:" introduces the list after it: they are one passage.
            if !para.last().is_some_and(|l| l.ends_with(':')) || is_rule(trimmed) {
                flush(source, &headings, &mut para, &mut out);
            }
            continue;
        }
        // Setext headings ("Title" underlined with === or ---) turn the paragraph into a heading.
        if !para.is_empty()
            && (trimmed.chars().all(|c| c == '=') || trimmed.chars().all(|c| c == '-'))
        {
            let level = if trimmed.starts_with('=') { 1 } else { 2 };
            let title = para.join(" ");
            para.clear();
            headings.retain(|(l, _)| *l < level);
            headings.push((level, title));
            continue;
        }
        let item = list_item(trimmed);
        let text = inline(item.unwrap_or(trimmed));
        if text.is_empty() {
            continue;
        }
        if item.is_some() || trimmed.starts_with('|') {
            // Each list item or table row reads as its own sentence.
            para.push(end_sentence(text));
        } else {
            para.push(text);
        }
    }
    flush(source, &headings, &mut para, &mut out);
    out
}

fn flush(
    source: &str,
    headings: &[(usize, String)],
    para: &mut Vec<String>,
    out: &mut Vec<Passage>,
) {
    if para.is_empty() {
        return;
    }
    let text = para.join(" ");
    para.clear();
    let heading = headings
        .iter()
        .map(|(_, h)| h.as_str())
        .filter(|h| !h.is_empty())
        .collect::<Vec<_>>()
        .join(" > ");
    for chunk in chunks(&text) {
        out.push(Passage {
            source: source.to_string(),
            heading: heading.clone(),
            text: chunk,
        });
    }
}

/// Cuts long text at sentence ends into pieces of at most about MAX_PASSAGE_CHARS.
fn chunks(text: &str) -> Vec<String> {
    if text.chars().count() <= MAX_PASSAGE_CHARS {
        return vec![text.to_string()];
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    for sentence in sentences(text) {
        if !cur.is_empty() && cur.chars().count() + sentence.chars().count() > MAX_PASSAGE_CHARS {
            out.push(std::mem::take(&mut cur).trim().to_string());
        }
        cur.push_str(sentence);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Splits after ". ", "! " and "? " (keeping the punctuation and the space).
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        if matches!(bytes[i], b'.' | b'!' | b'?') && bytes.get(i + 1) == Some(&b' ') {
            out.push(&text[start..i + 2]);
            start = i + 2;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn end_sentence(mut s: String) -> String {
    if !s.ends_with(['.', '!', '?', ':', ';']) {
        s.push('.');
    }
    s
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    if level == 0 || level > 6 {
        return None;
    }
    let rest = &line[level..];
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some((level, rest.trim().trim_end_matches('#').trim()))
}

fn is_rule(line: &str) -> bool {
    let c: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    c.len() >= 3 && (c.chars().all(|x| x == '*') || c.chars().all(|x| x == '_'))
}

/// "- x", "* x", "+ x", "1. x", "1) x", "> x" -> "x".
fn list_item(line: &str) -> Option<&str> {
    for marker in ["- ", "* ", "+ ", "> "] {
        if let Some(rest) = line.strip_prefix(marker) {
            return Some(rest.trim_start());
        }
    }
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 && digits < 4 {
        let rest = &line[digits..];
        if let Some(r) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
            return Some(r.trim_start());
        }
    }
    None
}

/// Removes inline markup: emphasis, code ticks, links (keeping their text), images, HTML
/// tags, table pipes.
fn inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '!' if chars.get(i + 1) == Some(&'[') => {
                // Image: drop alt text and target.
                if let Some(end) = link_end(&chars, i + 1) {
                    i = end;
                    continue;
                }
                out.push(c);
            }
            '[' => {
                if let Some(close) = chars[i..].iter().position(|&x| x == ']').map(|p| p + i) {
                    let text: String = chars[i + 1..close].iter().collect();
                    out.push_str(&text);
                    i = match link_end(&chars, i) {
                        Some(end) => end,
                        None => close + 1,
                    };
                    continue;
                }
                out.push(c);
            }
            '<' => {
                if let Some(close) = chars[i..].iter().position(|&x| x == '>').map(|p| p + i) {
                    let inner: String = chars[i + 1..close].iter().collect();
                    // <https://…> autolinks keep their text; tags go.
                    if inner.contains("://") || inner.contains('@') {
                        out.push_str(&inner);
                    }
                    i = close + 1;
                    continue;
                }
                out.push(c);
            }
            '*' | '`' => {}
            '_' if (i == 0 || !chars[i - 1].is_alphanumeric())
                || chars.get(i + 1).is_none_or(|n| !n.is_alphanumeric()) => {}
            '|' => out.push(' '),
            '\\' if i + 1 < chars.len() => {
                out.push(chars[i + 1]);
                i += 1;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// For `[text](target)` starting at `open` ('['), the index after ')'.
fn link_end(chars: &[char], open: usize) -> Option<usize> {
    let close = chars[open..].iter().position(|&x| x == ']')? + open;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let end = chars[close..].iter().position(|&x| x == ')')? + close;
    Some(end + 1)
}
