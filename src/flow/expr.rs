//! The flow expression language: a small, total (never panicking) parser and evaluator, close
//! to Chatlayer's expression syntax.
//!
//! Flows need conditions and computed values (`choice == "1"`, `'+' + digits`,
//! `IF(count > 2, 'agent', 'menu')`) but must not be able to run arbitrary code or hang a call,
//! so this is a deliberately small language over JSON values: literals (numbers, text, `true`,
//! `false`, `null`, lists `[1, 'a']`, objects `{'name': 'Ann'}`), variable paths with member and
//! index access (`users[0].name`, `items.0`), arithmetic, comparisons, boolean logic, a
//! conditional (`c ? a : b` or `IF(c, a, b)`) and Chatlayer's upper-case built-in functions.
//! Expressions are parsed once at load time; evaluation only fails with an [`ExprError`].
//!
//! Missing values behave as in Chatlayer: an unset variable reads as `null`, which joins text
//! as nothing (`'Hello ' + name`) and counts as 0 in arithmetic (`count + 1`).

use std::cell::Cell;
use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Map, Number, Value};
use thiserror::Error;

mod functions;

use functions::Func;

/// Longest expression source accepted, in characters (hostile-input guard).
pub const MAX_EXPR_LEN: usize = 2048;
/// Deepest nesting accepted (parentheses, operators, calls); bounds evaluation recursion too.
pub const MAX_DEPTH: usize = 64;
/// Longest text or list an expression may build (hostile-input guard for APPEND, REPEAT...).
pub const MAX_VALUE_LEN: usize = 100_000;

/// Why an expression could not be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ExprError {
    #[error("syntax error at column {column}: {message}")]
    Syntax { column: usize, message: String },
    #[error("expression is too long ({len} characters; the limit is {limit})")]
    TooLong { len: usize, limit: usize },
    #[error("expression is nested too deeply (the limit is {limit} levels)")]
    TooDeep { limit: usize },
    #[error("division by zero")]
    DivisionByZero,
    #[error("type error: {0}")]
    Type(String),
    #[error("number out of range: {0}")]
    Overflow(String),
    #[error("{function}(): {message}")]
    Function {
        function: &'static str,
        message: String,
    },
}

fn syntax(column: usize, message: impl Into<String>) -> ExprError {
    ExprError::Syntax {
        column,
        message: message.into(),
    }
}

thread_local! {
    static CLOCK: Cell<Option<DateTime<Utc>>> = const { Cell::new(None) };
}

/// Sets the wall clock that `NOW()` and the date functions read while it lives. The flow
/// machine sets it from the time the call side passes in, so evaluation stays deterministic.
pub struct ClockGuard {
    previous: Option<DateTime<Utc>>,
}

impl ClockGuard {
    pub fn set(now: DateTime<Utc>) -> Self {
        let previous = CLOCK.with(|c| c.replace(Some(now)));
        Self { previous }
    }
}

impl Drop for ClockGuard {
    fn drop(&mut self) {
        CLOCK.with(|c| c.set(self.previous));
    }
}

/// The wall clock set by [`ClockGuard`], else the system clock.
pub(crate) fn clock_now() -> DateTime<Utc> {
    CLOCK.with(Cell::get).unwrap_or_else(Utc::now)
}

/// A dotted variable path such as `call.from` or `now.utc.hours` (a write target or a
/// lookup; expressions themselves may also index with `[...]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VarPath {
    segments: Vec<String>,
}

impl VarPath {
    /// Parses `a.b.c`: the first segment is an identifier, later ones identifiers or indices.
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        if text.chars().count() > MAX_EXPR_LEN {
            return Err(ExprError::TooLong {
                len: text.chars().count(),
                limit: MAX_EXPR_LEN,
            });
        }
        let mut segments = Vec::new();
        for (i, seg) in text.split('.').enumerate() {
            let valid = !seg.is_empty()
                && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && (i > 0 || seg.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
            if !valid {
                return Err(syntax(
                    1,
                    format!(
                        "`{text}` is not a variable path (expected names like `a.b.c` made of \
                         letters, digits and `_`, starting with a letter)"
                    ),
                ));
            }
            segments.push(seg.to_string());
        }
        if segments.len() > MAX_DEPTH {
            return Err(ExprError::TooDeep { limit: MAX_DEPTH });
        }
        Ok(Self { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The first segment, which decides the variable's scope.
    pub fn root(&self) -> &str {
        self.segments
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Finds the value at this path; array elements are reached by numeric segments.
    pub fn lookup<'a>(&self, vars: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        let mut cur = vars.get(first)?;
        for seg in rest {
            cur = match cur {
                Value::Object(map) => map.get(seg)?,
                Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

impl fmt::Display for VarPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

/// A parsed expression, ready to evaluate against a session's variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    source: String,
    node: Node,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Value),
    /// A variable (the root of a path).
    Var(String),
    /// `x.name` (also `x.0`).
    Member(Box<Node>, String),
    /// `x[expr]`.
    Index(Box<Node>, Box<Node>),
    List(Vec<Node>),
    Object(Vec<(String, Node)>),
    Neg(Box<Node>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    /// `c ? a : b` and `IF(c, a, b)`: only the chosen side is evaluated.
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

impl Expr {
    /// Parses an expression; every problem is reported with its column.
    pub fn parse(source: &str) -> Result<Self, ExprError> {
        let len = source.chars().count();
        if len > MAX_EXPR_LEN {
            return Err(ExprError::TooLong {
                len,
                limit: MAX_EXPR_LEN,
            });
        }
        let tokens = lex(source)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            depth: 0,
            end_column: len + 1,
        };
        let (node, _) = parser.expr()?;
        if let Some(tok) = parser.tokens.get(parser.pos) {
            return Err(syntax(
                tok.column,
                format!("unexpected {} after the expression", tok.kind.describe()),
            ));
        }
        Ok(Self {
            source: source.to_string(),
            node,
        })
    }

    /// The text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The root names of every variable the expression reads (for load-time checks).
    pub fn roots(&self) -> Vec<&str> {
        fn walk<'a>(node: &'a Node, out: &mut Vec<&'a str>) {
            match node {
                Node::Lit(_) => {}
                Node::Var(p) => out.push(p),
                Node::Member(a, _) | Node::Neg(a) | Node::Not(a) => walk(a, out),
                Node::Index(a, b) | Node::And(a, b) | Node::Or(a, b) | Node::Bin(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Node::Cond(a, b, c) => {
                    walk(a, out);
                    walk(b, out);
                    walk(c, out);
                }
                Node::List(items) | Node::Call(_, items) => items.iter().for_each(|a| walk(a, out)),
                Node::Object(entries) => entries.iter().for_each(|(_, a)| walk(a, out)),
            }
        }
        let mut out = Vec::new();
        walk(&self.node, &mut out);
        out
    }

    /// Evaluates against the session variables; missing variables read as `null`.
    pub fn eval(&self, vars: &Map<String, Value>) -> Result<Value, ExprError> {
        eval(&self.node, vars)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Truthiness used by conditions and `and`/`or`/`not`: `false`, `null`, `0` and `""` are false.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// How a value reads inside text: strings as-is, `null` as nothing, whole floats without `.0`,
/// lists and objects as JSON.
pub fn display_value(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match num_of(n) {
            Num::I(i) => i.to_string(),
            Num::F(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            Num::F(f) => f.to_string(),
        },
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Value),
    Str(String),
    /// An identifier; keywords are recognised by the parser.
    Ident(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Colon,
    Question,
    Dot,
    Op(&'static str),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Num(n) => format!("number `{n}`"),
            Tok::Str(_) => "string".to_string(),
            Tok::Ident(p) => format!("`{p}`"),
            Tok::LParen => "`(`".to_string(),
            Tok::RParen => "`)`".to_string(),
            Tok::LBracket => "`[`".to_string(),
            Tok::RBracket => "`]`".to_string(),
            Tok::LBrace => "`{`".to_string(),
            Tok::RBrace => "`}`".to_string(),
            Tok::Comma => "`,`".to_string(),
            Tok::Colon => "`:`".to_string(),
            Tok::Question => "`?`".to_string(),
            Tok::Dot => "`.`".to_string(),
            Tok::Op(op) => format!("`{op}`"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Tok,
    /// 1-based character column of the token's start.
    column: usize,
}

fn lex(source: &str) -> Result<Vec<Token>, ExprError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens: Vec<Token> = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let column = i + 1;
        let peek = chars.get(i + 1).copied();
        let after_dot = matches!(tokens.last(), Some(Token { kind: Tok::Dot, .. }));
        let kind = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            '{' => Tok::LBrace,
            '}' => Tok::RBrace,
            ',' => Tok::Comma,
            ':' => Tok::Colon,
            '?' => Tok::Question,
            '.' => Tok::Dot,
            '+' => Tok::Op("+"),
            '-' => Tok::Op("-"),
            '*' => Tok::Op("*"),
            '/' => Tok::Op("/"),
            '%' => Tok::Op("%"),
            '=' if peek == Some('=') => Tok::Op("=="),
            '=' => {
                return Err(syntax(
                    column,
                    "`=` is not an operator; use `==` to compare",
                ))
            }
            '!' if peek == Some('=') => Tok::Op("!="),
            '!' => Tok::Op("!"),
            '<' if peek == Some('=') => Tok::Op("<="),
            '<' => Tok::Op("<"),
            '>' if peek == Some('=') => Tok::Op(">="),
            '>' => Tok::Op(">"),
            '&' if peek == Some('&') => Tok::Op("&&"),
            '|' if peek == Some('|') => Tok::Op("||"),
            '"' | '\'' => {
                let (text, next) = lex_string(&chars, i)?;
                tokens.push(Token {
                    kind: Tok::Str(text),
                    column,
                });
                i = next;
                continue;
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
                    i += 1;
                }
                // After a `.` a number is an index (`a.1.2`), never a fraction.
                let mut float = false;
                if !after_dot
                    && chars.get(i) == Some(&'.')
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                {
                    float = true;
                    i += 1;
                    while chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
                        i += 1;
                    }
                }
                let text: String = chars[start..i].iter().collect();
                if chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_')
                {
                    return Err(syntax(
                        i + 1,
                        format!("unexpected `{}` after the number `{text}`", chars[i]),
                    ));
                }
                let value = if float {
                    text.parse::<f64>()
                        .ok()
                        .and_then(Number::from_f64)
                        .map(Value::Number)
                } else {
                    text.parse::<i64>().ok().map(Value::from)
                };
                let value = value
                    .ok_or_else(|| syntax(column, format!("number `{text}` is out of range")))?;
                tokens.push(Token {
                    kind: Tok::Num(value),
                    column,
                });
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
                tokens.push(Token {
                    kind: Tok::Ident(chars[start..i].iter().collect()),
                    column,
                });
                continue;
            }
            other => return Err(syntax(column, format!("unexpected character `{other}`"))),
        };
        i += match &kind {
            Tok::Op(op) => op.len(),
            _ => 1,
        };
        tokens.push(Token { kind, column });
    }
    Ok(tokens)
}

/// Reads a quoted string starting at `start`; returns the text and the index after the quote.
fn lex_string(chars: &[char], start: usize) -> Result<(String, usize), ExprError> {
    let quote = chars[start];
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err(syntax(start + 1, "unterminated string")),
            Some(&c) if c == quote => return Ok((out, i + 1)),
            Some('\\') => {
                let escaped = match chars.get(i + 1) {
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some(&c @ ('\\' | '"' | '\'')) => c,
                    Some(other) => {
                        return Err(syntax(
                            i + 1,
                            format!("unknown escape `\\{other}` in string"),
                        ))
                    }
                    None => return Err(syntax(start + 1, "unterminated string")),
                };
                out.push(escaped);
                i += 2;
            }
            Some(&c) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parser (precedence climbing, lowest first: ?:, or, and, not, comparison, + -, * / %,
// unary -, member/index)

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Current recursion depth, limited to [`MAX_DEPTH`].
    depth: usize,
    end_column: usize,
}

/// A node and the depth of the tree under it.
type Parsed = (Node, usize);

const KEYWORDS: [&str; 3] = ["and", "or", "not"];

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.kind)
    }

    fn column(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map(|t| t.column)
            .unwrap_or(self.end_column)
    }

    fn is_op(&self, ops: &[&'static str]) -> Option<&'static str> {
        match self.peek() {
            Some(Tok::Op(op)) if ops.contains(op) => Some(op),
            Some(Tok::Ident(word)) => ops
                .iter()
                .copied()
                .find(|o| o.eq_ignore_ascii_case(word) && KEYWORDS.contains(o)),
            _ => None,
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ExprError> {
        if self.peek() == Some(&tok) {
            self.pos += 1;
            Ok(())
        } else {
            Err(syntax(self.column(), format!("expected {what}")))
        }
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::TooDeep { limit: MAX_DEPTH });
        }
        Ok(())
    }

    fn join(node: Node, depths: &[usize]) -> Result<Parsed, ExprError> {
        let depth = depths.iter().copied().max().unwrap_or(0) + 1;
        if depth > MAX_DEPTH {
            return Err(ExprError::TooDeep { limit: MAX_DEPTH });
        }
        Ok((node, depth))
    }

    fn expr(&mut self) -> Result<Parsed, ExprError> {
        self.enter()?;
        let result = self.ternary();
        self.depth -= 1;
        result
    }

    fn ternary(&mut self) -> Result<Parsed, ExprError> {
        let (cond, cd) = self.or()?;
        if self.peek() != Some(&Tok::Question) {
            return Ok((cond, cd));
        }
        self.pos += 1;
        let (a, ad) = self.expr()?;
        self.expect(Tok::Colon, "`:` in `condition ? value : other`")?;
        let (b, bd) = self.expr()?;
        Self::join(
            Node::Cond(Box::new(cond), Box::new(a), Box::new(b)),
            &[cd, ad, bd],
        )
    }

    fn or(&mut self) -> Result<Parsed, ExprError> {
        let (mut left, mut ld) = self.and()?;
        while self.is_op(&["or", "||"]).is_some() {
            self.pos += 1;
            let (right, rd) = self.and()?;
            (left, ld) = Self::join(Node::Or(Box::new(left), Box::new(right)), &[ld, rd])?;
        }
        Ok((left, ld))
    }

    fn and(&mut self) -> Result<Parsed, ExprError> {
        let (mut left, mut ld) = self.not()?;
        while self.is_op(&["and", "&&"]).is_some() {
            self.pos += 1;
            let (right, rd) = self.not()?;
            (left, ld) = Self::join(Node::And(Box::new(left), Box::new(right)), &[ld, rd])?;
        }
        Ok((left, ld))
    }

    fn not(&mut self) -> Result<Parsed, ExprError> {
        if self.is_op(&["not", "!"]).is_some() {
            self.pos += 1;
            self.enter()?;
            let inner = self.not();
            self.depth -= 1;
            let (inner, d) = inner?;
            return Self::join(Node::Not(Box::new(inner)), &[d]);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Parsed, ExprError> {
        let (left, ld) = self.additive()?;
        let Some(op) = self.is_op(&["==", "!=", "<", "<=", ">", ">="]) else {
            return Ok((left, ld));
        };
        self.pos += 1;
        let op = match op {
            "==" => BinOp::Eq,
            "!=" => BinOp::Ne,
            "<" => BinOp::Lt,
            "<=" => BinOp::Le,
            ">" => BinOp::Gt,
            _ => BinOp::Ge,
        };
        let (right, rd) = self.additive()?;
        if self.is_op(&["==", "!=", "<", "<=", ">", ">="]).is_some() {
            return Err(syntax(
                self.column(),
                "comparisons cannot be chained; combine them with `and`",
            ));
        }
        Self::join(Node::Bin(op, Box::new(left), Box::new(right)), &[ld, rd])
    }

    fn additive(&mut self) -> Result<Parsed, ExprError> {
        let (mut left, mut ld) = self.multiplicative()?;
        while let Some(op) = self.is_op(&["+", "-"]) {
            self.pos += 1;
            let op = if op == "+" { BinOp::Add } else { BinOp::Sub };
            let (right, rd) = self.multiplicative()?;
            (left, ld) = Self::join(Node::Bin(op, Box::new(left), Box::new(right)), &[ld, rd])?;
        }
        Ok((left, ld))
    }

    fn multiplicative(&mut self) -> Result<Parsed, ExprError> {
        let (mut left, mut ld) = self.unary()?;
        while let Some(op) = self.is_op(&["*", "/", "%"]) {
            self.pos += 1;
            let op = match op {
                "*" => BinOp::Mul,
                "/" => BinOp::Div,
                _ => BinOp::Rem,
            };
            let (right, rd) = self.unary()?;
            (left, ld) = Self::join(Node::Bin(op, Box::new(left), Box::new(right)), &[ld, rd])?;
        }
        Ok((left, ld))
    }

    fn unary(&mut self) -> Result<Parsed, ExprError> {
        if self.is_op(&["-"]).is_some() {
            self.pos += 1;
            self.enter()?;
            let inner = self.unary();
            self.depth -= 1;
            let (inner, d) = inner?;
            return Self::join(Node::Neg(Box::new(inner)), &[d]);
        }
        self.postfix()
    }

    /// `x.name`, `x.0`, `x[expr]`, repeated.
    fn postfix(&mut self) -> Result<Parsed, ExprError> {
        let (mut node, mut d) = self.primary()?;
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    let column = self.column();
                    let name = match self.peek().cloned() {
                        Some(Tok::Ident(name)) => name,
                        Some(Tok::Num(Value::Number(n))) if n.is_u64() => n.to_string(),
                        _ => return Err(syntax(column, "expected a name after `.`")),
                    };
                    self.pos += 1;
                    (node, d) = Self::join(Node::Member(Box::new(node), name), &[d])?;
                }
                Some(Tok::LBracket) => {
                    self.pos += 1;
                    let (index, id) = self.expr()?;
                    self.expect(Tok::RBracket, "`]`")?;
                    (node, d) = Self::join(Node::Index(Box::new(node), Box::new(index)), &[d, id])?;
                }
                _ => return Ok((node, d)),
            }
        }
    }

    fn primary(&mut self) -> Result<Parsed, ExprError> {
        let column = self.column();
        let Some(tok) = self.tokens.get(self.pos).map(|t| t.kind.clone()) else {
            return Err(syntax(column, "expression ends where a value was expected"));
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok((Node::Lit(n), 1)),
            Tok::Str(s) => Ok((Node::Lit(Value::String(s)), 1)),
            Tok::LParen => {
                let inner = self.expr()?;
                self.expect(Tok::RParen, "`)`")?;
                Ok(inner)
            }
            Tok::LBracket => {
                let (items, depths) = self.items(Tok::RBracket, "`,` or `]` in a list")?;
                Self::join(Node::List(items), &depths)
            }
            Tok::LBrace => self.object(),
            Tok::Ident(word) => match word.as_str() {
                "true" | "TRUE" | "True" => Ok((Node::Lit(Value::Bool(true)), 1)),
                "false" | "FALSE" | "False" => Ok((Node::Lit(Value::Bool(false)), 1)),
                "null" | "NULL" | "undefined" => Ok((Node::Lit(Value::Null), 1)),
                w if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(w)) => Err(syntax(
                    column,
                    format!("`{word}` needs a value on each side"),
                )),
                _ if self.peek() == Some(&Tok::LParen) => self.call(&word, column),
                _ => Ok((Node::Var(word), 1)),
            },
            other => Err(syntax(
                column,
                format!("unexpected {} where a value was expected", other.describe()),
            )),
        }
    }

    /// Comma-separated expressions up to `close` (the opening token is consumed).
    fn items(&mut self, close: Tok, what: &str) -> Result<(Vec<Node>, Vec<usize>), ExprError> {
        let mut items = Vec::new();
        let mut depths = Vec::new();
        if self.peek() == Some(&close) {
            self.pos += 1;
            return Ok((items, depths));
        }
        loop {
            let (item, d) = self.expr()?;
            items.push(item);
            depths.push(d);
            match self.peek() {
                Some(Tok::Comma) => {
                    self.pos += 1;
                    // A trailing comma is fine: `[1, 2,]`.
                    if self.peek() == Some(&close) {
                        self.pos += 1;
                        return Ok((items, depths));
                    }
                }
                Some(t) if *t == close => {
                    self.pos += 1;
                    return Ok((items, depths));
                }
                _ => return Err(syntax(self.column(), format!("expected {what}"))),
            }
        }
    }

    /// `{'key': value, name: value}` (the `{` is consumed).
    fn object(&mut self) -> Result<Parsed, ExprError> {
        let mut entries = Vec::new();
        let mut depths = Vec::new();
        loop {
            let column = self.column();
            let key = match self.peek().cloned() {
                Some(Tok::RBrace) => {
                    self.pos += 1;
                    break;
                }
                Some(Tok::Str(s) | Tok::Ident(s)) => s,
                Some(Tok::Num(n)) => n.to_string(),
                _ => {
                    return Err(syntax(
                        column,
                        "expected a key (a name or text) in an object",
                    ))
                }
            };
            self.pos += 1;
            self.expect(Tok::Colon, "`:` after an object key")?;
            let (value, d) = self.expr()?;
            entries.push((key, value));
            depths.push(d);
            match self.peek() {
                Some(Tok::Comma) => self.pos += 1,
                Some(Tok::RBrace) => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(syntax(self.column(), "expected `,` or `}` in an object")),
            }
        }
        Self::join(Node::Object(entries), &depths)
    }

    fn call(&mut self, name: &str, column: usize) -> Result<Parsed, ExprError> {
        let Some(func) = Func::lookup(name) else {
            return Err(syntax(
                column,
                format!(
                    "unknown function `{name}` (functions: {})",
                    functions::names().join(", ")
                ),
            ));
        };
        self.pos += 1; // the `(`
        let (args, depths) = self.items(Tok::RParen, "`,` or `)` in call")?;
        let (min, max) = func.arity();
        if args.len() < min || args.len() > max {
            let want = match (min, max) {
                (a, b) if a == b => format!("{a} argument{}", if a == 1 { "" } else { "s" }),
                (a, usize::MAX) => format!("at least {a} arguments"),
                (a, b) => format!("{a} to {b} arguments"),
            };
            return Err(syntax(
                column,
                format!("{}() takes {want}, got {}", func.name(), args.len()),
            ));
        }
        if func == Func::If {
            let mut it = args.into_iter();
            let (Some(c), Some(a), Some(b)) = (it.next(), it.next(), it.next()) else {
                return Err(syntax(column, "IF() takes 3 arguments"));
            };
            return Self::join(Node::Cond(Box::new(c), Box::new(a), Box::new(b)), &depths);
        }
        Self::join(Node::Call(func, args), &depths)
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluator

#[derive(Debug, Clone, Copy)]
enum Num {
    I(i64),
    F(f64),
}

impl Num {
    fn f(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    fn is_zero(self) -> bool {
        self.f() == 0.0
    }
}

fn num_of(n: &Number) -> Num {
    match n.as_i64() {
        Some(i) => Num::I(i),
        None => Num::F(n.as_f64().unwrap_or(0.0)),
    }
}

fn num_value(n: Num, what: &str) -> Result<Value, ExprError> {
    match n {
        Num::I(i) => Ok(Value::from(i)),
        Num::F(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Value::from(f as i64)),
        Num::F(f) => Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| ExprError::Overflow(format!("the result of {what} is not finite"))),
    }
}

/// A string that reads as a number (`"42"`, `" 3.5 "`), for comparisons with numbers.
fn parse_num(s: &str) -> Option<Num> {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(Num::I(i));
    }
    if t.is_empty() || t.contains(|c: char| c.is_ascii_alphabetic()) {
        // `inf`, `NaN` and `1e5` are not numbers a caller types.
        return None;
    }
    t.parse::<f64>().ok().filter(|f| f.is_finite()).map(Num::F)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// `value.key` / `value[key]`: objects by key, lists and text by position; anything missing
/// (or indexed from `null`) is `null`.
fn index(base: &Value, key: &Value) -> Value {
    let position = |len: usize| -> Option<usize> {
        let n = match key {
            Value::Number(n) => num_of(n),
            Value::String(s) => parse_num(s)?,
            _ => return None,
        };
        let i = match n {
            Num::I(i) => i,
            Num::F(f) if f.fract() == 0.0 => f as i64,
            _ => return None,
        };
        // Negative positions count from the end, as in Chatlayer's SLICE.
        let i = if i < 0 { len as i64 + i } else { i };
        usize::try_from(i).ok().filter(|i| *i < len)
    };
    match base {
        Value::Object(map) => map.get(&display_value(key)).cloned().unwrap_or(Value::Null),
        Value::Array(items) => position(items.len())
            .and_then(|i| items.get(i).cloned())
            .unwrap_or(Value::Null),
        Value::String(s) => {
            let chars: Vec<char> = s.chars().collect();
            position(chars.len())
                .map(|i| Value::String(chars[i].to_string()))
                .unwrap_or(Value::Null)
        }
        _ => Value::Null,
    }
}

fn eval(node: &Node, vars: &Map<String, Value>) -> Result<Value, ExprError> {
    match node {
        Node::Lit(v) => Ok(v.clone()),
        Node::Var(name) => Ok(vars.get(name).cloned().unwrap_or(Value::Null)),
        Node::Member(base, name) => Ok(index(&eval(base, vars)?, &Value::String(name.clone()))),
        Node::Index(base, key) => Ok(index(&eval(base, vars)?, &eval(key, vars)?)),
        Node::List(items) => Ok(Value::Array(
            items
                .iter()
                .map(|i| eval(i, vars))
                .collect::<Result<_, _>>()?,
        )),
        Node::Object(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k.clone(), eval(v, vars)?);
            }
            Ok(Value::Object(out))
        }
        Node::Neg(inner) => match eval(inner, vars)? {
            Value::Null => Ok(Value::from(0)),
            Value::Number(n) => match num_of(&n) {
                Num::I(i) => match i.checked_neg() {
                    Some(v) => Ok(Value::from(v)),
                    None => num_value(Num::F(-(i as f64)), "negation"),
                },
                Num::F(f) => num_value(Num::F(-f), "negation"),
            },
            Value::String(s) if parse_num(&s).is_some() => {
                let n = parse_num(&s).unwrap_or(Num::I(0));
                num_value(Num::F(-n.f()), "negation")
            }
            other => Err(ExprError::Type(format!(
                "cannot negate a {}",
                type_name(&other)
            ))),
        },
        Node::Not(inner) => Ok(Value::Bool(!truthy(&eval(inner, vars)?))),
        Node::And(l, r) => Ok(Value::Bool(
            truthy(&eval(l, vars)?) && truthy(&eval(r, vars)?),
        )),
        Node::Or(l, r) => Ok(Value::Bool(
            truthy(&eval(l, vars)?) || truthy(&eval(r, vars)?),
        )),
        Node::Cond(c, a, b) => {
            if truthy(&eval(c, vars)?) {
                eval(a, vars)
            } else {
                eval(b, vars)
            }
        }
        Node::Bin(op, l, r) => binary(*op, eval(l, vars)?, eval(r, vars)?),
        Node::Call(func, args) => {
            let mut values = Vec::with_capacity(args.len());
            for arg in args {
                values.push(eval(arg, vars)?);
            }
            func.call(values)
        }
    }
}

/// A number for arithmetic: numbers, numeric text (DTMF input is text), `null` as 0.
fn arith_operand(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => Some(num_of(n)),
        Value::Null => Some(Num::I(0)),
        Value::String(s) => parse_num(s),
        _ => None,
    }
}

fn binary(op: BinOp, l: Value, r: Value) -> Result<Value, ExprError> {
    match op {
        BinOp::Eq => Ok(Value::Bool(equal(&l, &r))),
        BinOp::Ne => Ok(Value::Bool(!equal(&l, &r))),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = compare(&l, &r)?;
            Ok(Value::Bool(match op {
                BinOp::Lt => ord == Ordering::Less,
                BinOp::Le => ord != Ordering::Greater,
                BinOp::Gt => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            }))
        }
        BinOp::Add => match (&l, &r) {
            (Value::Number(a), Value::Number(b)) => arith(op, num_of(a), num_of(b)),
            (Value::Null, Value::Null) => Ok(Value::Null),
            (Value::Null, Value::Number(_)) => Ok(r),
            (Value::Number(_), Value::Null) => Ok(l),
            (Value::Array(a), Value::Array(b)) => {
                let mut out = a.clone();
                out.extend(b.iter().cloned());
                limit_list(out)
            }
            (Value::String(_), _) | (_, Value::String(_)) => {
                let text = format!("{}{}", display_value(&l), display_value(&r));
                limit_text(text)
            }
            _ => Err(ExprError::Type(format!(
                "cannot add a {} and a {}",
                type_name(&l),
                type_name(&r)
            ))),
        },
        BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
            match (arith_operand(&l), arith_operand(&r)) {
                (Some(a), Some(b)) => arith(op, a, b),
                _ => Err(ExprError::Type(format!(
                    "`{}` needs two numbers, got a {} and a {}",
                    op_symbol(op),
                    type_name(&l),
                    type_name(&r)
                ))),
            }
        }
    }
}

fn limit_text(text: String) -> Result<Value, ExprError> {
    if text.len() > MAX_VALUE_LEN {
        return Err(ExprError::Overflow(format!(
            "text longer than {MAX_VALUE_LEN} bytes"
        )));
    }
    Ok(Value::String(text))
}

fn limit_list(items: Vec<Value>) -> Result<Value, ExprError> {
    if items.len() > MAX_VALUE_LEN {
        return Err(ExprError::Overflow(format!(
            "list longer than {MAX_VALUE_LEN} items"
        )));
    }
    Ok(Value::Array(items))
}

fn op_symbol(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::Rem => "%",
        BinOp::Eq => "==",
        BinOp::Ne => "!=",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
    }
}

/// Integer arithmetic stays integral while exact and in range; otherwise it falls back to f64.
fn arith(op: BinOp, a: Num, b: Num) -> Result<Value, ExprError> {
    if matches!(op, BinOp::Div | BinOp::Rem) && b.is_zero() {
        return Err(ExprError::DivisionByZero);
    }
    let int = match (a, b) {
        (Num::I(x), Num::I(y)) => match op {
            BinOp::Add => x.checked_add(y),
            BinOp::Sub => x.checked_sub(y),
            BinOp::Mul => x.checked_mul(y),
            BinOp::Div => x
                .checked_rem(y)
                .filter(|rem| *rem == 0)
                .and_then(|_| x.checked_div(y)),
            BinOp::Rem => x.checked_rem(y),
            _ => None,
        },
        _ => None,
    };
    if let Some(i) = int {
        return Ok(Value::from(i));
    }
    let (x, y) = (a.f(), b.f());
    let f = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div => x / y,
        _ => x % y,
    };
    if !f.is_finite() {
        return Err(ExprError::Overflow(format!(
            "the result of `{}` is not finite",
            op_symbol(op)
        )));
    }
    Number::from_f64(f).map(Value::Number).ok_or_else(|| {
        ExprError::Overflow(format!("the result of `{}` is not finite", op_symbol(op)))
    })
}

/// Equality with one convenience: a number equals a string that reads as the same number, so
/// DTMF input (always text) can be compared with `choice == 1`.
fn equal(l: &Value, r: &Value) -> bool {
    match (l, r) {
        (Value::Number(a), Value::Number(b)) => num_of(a).f() == num_of(b).f(),
        (Value::Number(a), Value::String(s)) | (Value::String(s), Value::Number(a)) => {
            parse_num(s).is_some_and(|n| n.f() == num_of(a).f())
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equal(x, y))
        }
        _ => l == r,
    }
}

fn compare(l: &Value, r: &Value) -> Result<Ordering, ExprError> {
    let nums = match (l, r) {
        (Value::Number(a), Value::Number(b)) => Some((num_of(a), num_of(b))),
        (Value::Number(a), Value::String(s)) => parse_num(s).map(|b| (num_of(a), b)),
        (Value::String(s), Value::Number(b)) => parse_num(s).map(|a| (a, num_of(b))),
        (Value::String(a), Value::String(b)) => return Ok(a.cmp(b)),
        // A missing value compares as 0 with a number and as "" with text.
        (Value::Null, Value::Number(b)) => Some((Num::I(0), num_of(b))),
        (Value::Number(a), Value::Null) => Some((num_of(a), Num::I(0))),
        (Value::Null, Value::String(b)) => return Ok("".cmp(b.as_str())),
        (Value::String(a), Value::Null) => return Ok(a.as_str().cmp("")),
        (Value::Null, Value::Null) => return Ok(Ordering::Equal),
        _ => None,
    };
    match nums {
        Some((a, b)) => a
            .f()
            .partial_cmp(&b.f())
            .ok_or_else(|| ExprError::Type("numbers cannot be compared".to_string())),
        None => Err(ExprError::Type(format!(
            "cannot order a {} and a {}",
            type_name(l),
            type_name(r)
        ))),
    }
}

#[cfg(test)]
mod tests;
