//! The flow expression language: a small, total (never panicking) parser and evaluator.
//!
//! Flows need conditions and computed values (`choice == "1"`, `"+" + digits`) but must not be
//! able to run arbitrary code or hang a call, so this is a deliberately tiny language over JSON
//! values: literals, variable paths, arithmetic, comparisons, boolean logic and a few functions.
//! Expressions are parsed once at load time; evaluation only fails with an [`ExprError`].

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Number, Value};
use thiserror::Error;

/// Longest expression source accepted, in characters (hostile-input guard).
pub const MAX_EXPR_LEN: usize = 2048;
/// Deepest nesting accepted (parentheses, operators, calls); bounds evaluation recursion too.
pub const MAX_DEPTH: usize = 64;

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

/// A dotted variable path such as `call.from` or `now.utc.hours`.
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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Len,
    Str,
    Num,
    Upper,
    Lower,
    Trim,
    Contains,
    StartsWith,
}

impl Func {
    fn by_name(name: &str) -> Option<(Func, usize)> {
        Some(match name {
            "len" => (Func::Len, 1),
            "str" => (Func::Str, 1),
            "num" => (Func::Num, 1),
            "upper" => (Func::Upper, 1),
            "lower" => (Func::Lower, 1),
            "trim" => (Func::Trim, 1),
            "contains" => (Func::Contains, 2),
            "starts_with" => (Func::StartsWith, 2),
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Func::Len => "len",
            Func::Str => "str",
            Func::Num => "num",
            Func::Upper => "upper",
            Func::Lower => "lower",
            Func::Trim => "trim",
            Func::Contains => "contains",
            Func::StartsWith => "starts_with",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Value),
    Var(VarPath),
    Neg(Box<Node>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
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

    /// Every variable path the expression reads (for load-time checks).
    pub fn var_paths(&self) -> Vec<&VarPath> {
        fn walk<'a>(node: &'a Node, out: &mut Vec<&'a VarPath>) {
            match node {
                Node::Lit(_) => {}
                Node::Var(p) => out.push(p),
                Node::Neg(a) | Node::Not(a) => walk(a, out),
                Node::And(a, b) | Node::Or(a, b) | Node::Bin(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Node::Call(_, args) => args.iter().for_each(|a| walk(a, out)),
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

/// How a value reads inside text: strings as-is, `null` as nothing, whole floats without `.0`.
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
    /// An identifier or dotted path; keywords are recognised by the parser.
    Path(String),
    LParen,
    RParen,
    Comma,
    Op(&'static str),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Num(n) => format!("number `{n}`"),
            Tok::Str(_) => "string".to_string(),
            Tok::Path(p) => format!("`{p}`"),
            Tok::LParen => "`(`".to_string(),
            Tok::RParen => "`)`".to_string(),
            Tok::Comma => "`,`".to_string(),
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
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let column = i + 1;
        let peek = chars.get(i + 1).copied();
        let kind = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
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
                let mut float = false;
                if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                {
                    float = true;
                    i += 1;
                    while chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
                        i += 1;
                    }
                }
                let text: String = chars[start..i].iter().collect();
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
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                if text.contains('.') {
                    VarPath::parse(&text).map_err(|_| {
                        syntax(column, format!("`{text}` is not a valid variable path"))
                    })?;
                }
                tokens.push(Token {
                    kind: Tok::Path(text),
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
// Parser (precedence climbing, lowest first: or, and, not, comparison, + -, * / %, unary -)

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Current recursion depth, limited to [`MAX_DEPTH`].
    depth: usize,
    end_column: usize,
}

/// A node and the depth of the tree under it.
type Parsed = (Node, usize);

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
            Some(Tok::Path(word)) if ops.contains(&word.as_str()) => {
                ops.iter().copied().find(|o| *o == word)
            }
            _ => None,
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
        let result = self.or();
        self.depth -= 1;
        result
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
        self.primary()
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
                if self.peek() != Some(&Tok::RParen) {
                    return Err(syntax(self.column(), "expected `)`"));
                }
                self.pos += 1;
                Ok(inner)
            }
            Tok::Path(word) => match word.as_str() {
                "true" => Ok((Node::Lit(Value::Bool(true)), 1)),
                "false" => Ok((Node::Lit(Value::Bool(false)), 1)),
                "null" => Ok((Node::Lit(Value::Null), 1)),
                "and" | "or" | "not" => Err(syntax(
                    column,
                    format!("`{word}` needs a value on each side"),
                )),
                _ if self.peek() == Some(&Tok::LParen) => self.call(&word, column),
                _ => {
                    let path = VarPath::parse(&word).map_err(|_| {
                        syntax(column, format!("`{word}` is not a valid variable path"))
                    })?;
                    Ok((Node::Var(path), 1))
                }
            },
            other => Err(syntax(
                column,
                format!("unexpected {} where a value was expected", other.describe()),
            )),
        }
    }

    fn call(&mut self, name: &str, column: usize) -> Result<Parsed, ExprError> {
        let Some((func, arity)) = Func::by_name(name) else {
            return Err(syntax(
                column,
                format!(
                    "unknown function `{name}` (known: len, str, num, upper, lower, trim, \
                     contains, starts_with)"
                ),
            ));
        };
        self.pos += 1; // the `(`
        let mut args = Vec::new();
        let mut depths = Vec::new();
        if self.peek() == Some(&Tok::RParen) {
            self.pos += 1;
        } else {
            loop {
                let (arg, d) = self.expr()?;
                args.push(arg);
                depths.push(d);
                match self.peek() {
                    Some(Tok::Comma) => self.pos += 1,
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(syntax(self.column(), "expected `,` or `)` in call")),
                }
            }
        }
        if args.len() != arity {
            return Err(syntax(
                column,
                format!(
                    "{name}() takes {arity} argument{}, got {}",
                    if arity == 1 { "" } else { "s" },
                    args.len()
                ),
            ));
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

fn eval(node: &Node, vars: &Map<String, Value>) -> Result<Value, ExprError> {
    match node {
        Node::Lit(v) => Ok(v.clone()),
        Node::Var(path) => Ok(path.lookup(vars).cloned().unwrap_or(Value::Null)),
        Node::Neg(inner) => match eval(inner, vars)? {
            Value::Number(n) => match num_of(&n) {
                Num::I(i) => match i.checked_neg() {
                    Some(v) => Ok(Value::from(v)),
                    None => num_value(Num::F(-(i as f64)), "negation"),
                },
                Num::F(f) => num_value(Num::F(-f), "negation"),
            },
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
        Node::Bin(op, l, r) => binary(*op, eval(l, vars)?, eval(r, vars)?),
        Node::Call(func, args) => {
            let mut values = Vec::with_capacity(args.len());
            for arg in args {
                values.push(eval(arg, vars)?);
            }
            call(*func, values)
        }
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
        BinOp::Add => {
            match (&l, &r) {
                (Value::Number(a), Value::Number(b)) => arith(op, num_of(a), num_of(b)),
                (Value::String(_), Value::String(_) | Value::Number(_) | Value::Bool(_))
                | (Value::Number(_) | Value::Bool(_), Value::String(_)) => Ok(Value::String(
                    format!("{}{}", display_value(&l), display_value(&r)),
                )),
                _ => Err(ExprError::Type(format!(
                    "cannot add a {} and a {}",
                    type_name(&l),
                    type_name(&r)
                ))),
            }
        }
        BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => match (&l, &r) {
            (Value::Number(a), Value::Number(b)) => arith(op, num_of(a), num_of(b)),
            _ => Err(ExprError::Type(format!(
                "`{}` needs two numbers, got a {} and a {} (use num() to convert text)",
                op_symbol(op),
                type_name(&l),
                type_name(&r)
            ))),
        },
    }
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
    num_value(Num::F(f), &format!("`{}`", op_symbol(op)))
}

/// Equality with one convenience: a number equals a string that reads as the same number, so
/// DTMF input (always text) can be compared with `choice == 1`.
fn equal(l: &Value, r: &Value) -> bool {
    match (l, r) {
        (Value::Number(a), Value::Number(b)) => num_of(a).f() == num_of(b).f(),
        (Value::Number(a), Value::String(s)) | (Value::String(s), Value::Number(a)) => {
            parse_num(s).is_some_and(|n| n.f() == num_of(a).f())
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

fn call(func: Func, args: Vec<Value>) -> Result<Value, ExprError> {
    let fail = |message: String| ExprError::Function {
        function: func.name(),
        message,
    };
    let mut args = args.into_iter();
    let a = args.next().unwrap_or(Value::Null);
    match func {
        Func::Len => match &a {
            Value::Null => Ok(Value::from(0)),
            Value::String(s) => Ok(Value::from(s.chars().count())),
            Value::Array(v) => Ok(Value::from(v.len())),
            Value::Object(m) => Ok(Value::from(m.len())),
            other => Err(fail(format!("a {} has no length", type_name(other)))),
        },
        Func::Str => Ok(Value::String(display_value(&a))),
        Func::Num => match &a {
            Value::Number(_) => Ok(a),
            Value::Bool(b) => Ok(Value::from(i64::from(*b))),
            Value::String(s) => match parse_num(s) {
                Some(n) => num_value(n, "num()"),
                None => Err(fail(format!("`{s}` is not a number"))),
            },
            other => Err(fail(format!(
                "cannot convert a {} to a number",
                type_name(other)
            ))),
        },
        Func::Upper => Ok(Value::String(display_value(&a).to_uppercase())),
        Func::Lower => Ok(Value::String(display_value(&a).to_lowercase())),
        Func::Trim => Ok(Value::String(display_value(&a).trim().to_string())),
        Func::Contains => {
            let b = args.next().unwrap_or(Value::Null);
            match &a {
                Value::Array(items) => Ok(Value::Bool(items.iter().any(|x| equal(x, &b)))),
                Value::Object(map) => Ok(Value::Bool(map.contains_key(&display_value(&b)))),
                _ => Ok(Value::Bool(display_value(&a).contains(&display_value(&b)))),
            }
        }
        Func::StartsWith => {
            let b = args.next().unwrap_or(Value::Null);
            Ok(Value::Bool(
                display_value(&a).starts_with(&display_value(&b)),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> Map<String, Value> {
        json!({
            "choice": "1",
            "digits": "442079460000",
            "n": 7,
            "f": 2.5,
            "empty": "",
            "flag": true,
            "call": {"from": "alice", "headers": {"x-id": "9"}},
            "list": [10, 20, 30],
            "now": {"utc": {"hours": 13}}
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    fn run(src: &str) -> Result<Value, ExprError> {
        Expr::parse(src)?.eval(&vars())
    }

    #[test]
    fn evaluates_valid_expressions() {
        let cases: &[(&str, Value)] = &[
            ("1", json!(1)),
            ("-3", json!(-3)),
            ("1.5", json!(1.5)),
            ("'single' + \"double\"", json!("singledouble")),
            ("\"a\\\"b\\n\"", json!("a\"b\n")),
            ("true", json!(true)),
            ("false", json!(false)),
            ("null", json!(null)),
            ("1 + 2 * 3", json!(7)),
            ("(1 + 2) * 3", json!(9)),
            ("10 - 4 - 3", json!(3)),
            ("7 / 2", json!(3.5)),
            ("8 / 2", json!(4)),
            ("7 % 3", json!(1)),
            ("7.5 % 2", json!(1.5)),
            ("n * f", json!(17.5)),
            ("-n", json!(-7)),
            ("9223372036854775807 + 1", json!(9223372036854775808.0)),
            ("\"+\" + digits", json!("+442079460000")),
            ("\"n=\" + n", json!("n=7")),
            ("\"x\" + 2.0", json!("x2")),
            ("\"ok \" + flag", json!("ok true")),
            ("choice == \"1\"", json!(true)),
            ("choice == 1", json!(true)),
            ("choice != 2", json!(true)),
            ("1 == 1.0", json!(true)),
            ("\"abc\" == \"abc\"", json!(true)),
            ("null == missing", json!(true)),
            ("n > 5 and n <= 7", json!(true)),
            ("n < 5 or choice == '1'", json!(true)),
            ("n >= 8 || false", json!(false)),
            ("flag && !empty", json!(true)),
            ("not flag", json!(false)),
            ("not n == 7", json!(false)),
            ("\"b\" > \"a\"", json!(true)),
            ("digits > 5", json!(true)),
            ("call.from", json!("alice")),
            ("call.headers.x_id", json!(null)),
            ("list.1", json!(20)),
            ("now.utc.hours >= 9 and now.utc.hours < 17", json!(true)),
            ("missing.deep.path", json!(null)),
            ("len(digits)", json!(12)),
            ("len(missing)", json!(0)),
            ("len(list)", json!(3)),
            ("str(n) + str(null)", json!("7")),
            ("num(choice) + 1", json!(2)),
            ("num(' 2.5 ')", json!(2.5)),
            ("num(true)", json!(1)),
            ("upper('ab') + lower('CD')", json!("ABcd")),
            ("trim('  x ')", json!("x")),
            ("contains(digits, '2079')", json!(true)),
            ("contains(list, 20)", json!(true)),
            ("starts_with(digits, '44')", json!(true)),
            ("0 or ''", json!(false)),
        ];
        for (src, want) in cases {
            assert_eq!(
                &run(src).unwrap_or_else(|e| panic!("{src}: {e}")),
                want,
                "{src}"
            );
        }
    }

    #[test]
    fn reports_errors() {
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, fn(&ExprError) -> bool, &str)] = &[
            (
                "1 / 0",
                |e| *e == ExprError::DivisionByZero,
                "division by zero",
            ),
            (
                "n % 0",
                |e| *e == ExprError::DivisionByZero,
                "division by zero",
            ),
            (
                "f / 0.0",
                |e| *e == ExprError::DivisionByZero,
                "division by zero",
            ),
            (
                "'a' - 1",
                |e| matches!(e, ExprError::Type(_)),
                "needs two numbers",
            ),
            (
                "null + 1",
                |e| matches!(e, ExprError::Type(_)),
                "cannot add a null",
            ),
            (
                "-'x'",
                |e| matches!(e, ExprError::Type(_)),
                "cannot negate a string",
            ),
            (
                "flag < 1",
                |e| matches!(e, ExprError::Type(_)),
                "cannot order",
            ),
            (
                "num('abc')",
                |e| matches!(e, ExprError::Function { .. }),
                "not a number",
            ),
            (
                "len(n)",
                |e| matches!(e, ExprError::Function { .. }),
                "has no length",
            ),
            (
                "1e308",
                |e| matches!(e, ExprError::Syntax { .. }),
                "unexpected `e308`",
            ),
            (
                "99999999999999999999",
                |e| matches!(e, ExprError::Syntax { .. }),
                "out of range",
            ),
            (
                "1 +",
                |e| matches!(e, ExprError::Syntax { .. }),
                "ends where a value",
            ),
            (
                "(1 + 2",
                |e| matches!(e, ExprError::Syntax { .. }),
                "expected `)`",
            ),
            (
                "1 2",
                |e| matches!(e, ExprError::Syntax { .. }),
                "unexpected number",
            ),
            (
                "a = 1",
                |e| matches!(e, ExprError::Syntax { .. }),
                "use `==`",
            ),
            (
                "'open",
                |e| matches!(e, ExprError::Syntax { .. }),
                "unterminated",
            ),
            (
                "'\\q'",
                |e| matches!(e, ExprError::Syntax { .. }),
                "unknown escape",
            ),
            (
                "a..b",
                |e| matches!(e, ExprError::Syntax { .. }),
                "not a valid variable",
            ),
            (
                "a.",
                |e| matches!(e, ExprError::Syntax { .. }),
                "not a valid variable",
            ),
            (
                "1 < 2 < 3",
                |e| matches!(e, ExprError::Syntax { .. }),
                "chained",
            ),
            (
                "nope(1)",
                |e| matches!(e, ExprError::Syntax { .. }),
                "unknown function",
            ),
            (
                "len(1, 2)",
                |e| matches!(e, ExprError::Syntax { .. }),
                "takes 1 argument",
            ),
            (
                "and",
                |e| matches!(e, ExprError::Syntax { .. }),
                "needs a value",
            ),
            (
                "1 # 2",
                |e| matches!(e, ExprError::Syntax { .. }),
                "unexpected character",
            ),
            (
                "",
                |e| matches!(e, ExprError::Syntax { .. }),
                "ends where a value",
            ),
        ];
        for (src, is_kind, text) in cases {
            let err = run(src).expect_err(src);
            assert!(is_kind(&err), "{src}: wrong kind {err:?}");
            assert!(
                err.to_string().contains(text),
                "{src}: `{err}` lacks `{text}`"
            );
        }
    }

    #[test]
    fn overflowing_float_is_an_error_not_infinity() {
        let big = format!("{}.0", "9".repeat(300));
        let err = run(&format!("{big} * {big}")).unwrap_err();
        assert!(matches!(err, ExprError::Overflow(_)), "{err:?}");
    }

    #[test]
    fn syntax_errors_carry_the_column() {
        match Expr::parse("n + * 2").unwrap_err() {
            ExprError::Syntax { column, .. } => assert_eq!(column, 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_input_is_rejected_without_overflowing_the_stack() {
        let deep_parens = format!("{}1{}", "(".repeat(500), ")".repeat(500));
        assert_eq!(
            Expr::parse(&deep_parens).unwrap_err(),
            ExprError::TooDeep { limit: MAX_DEPTH }
        );
        let long_chain = vec!["1"; 300].join(" + ");
        assert_eq!(
            Expr::parse(&long_chain).unwrap_err(),
            ExprError::TooDeep { limit: MAX_DEPTH }
        );
        let nots = format!("{}true", "not ".repeat(200));
        assert_eq!(
            Expr::parse(&nots).unwrap_err(),
            ExprError::TooDeep { limit: MAX_DEPTH }
        );
        let negs = format!("{}1", "-".repeat(200));
        assert_eq!(
            Expr::parse(&negs).unwrap_err(),
            ExprError::TooDeep { limit: MAX_DEPTH }
        );
        let huge = "1".repeat(MAX_EXPR_LEN + 1);
        assert!(matches!(
            Expr::parse(&huge).unwrap_err(),
            ExprError::TooLong { .. }
        ));
        // Within the limits, nesting still works.
        let ok = format!("{}1{}", "(".repeat(20), ")".repeat(20));
        assert_eq!(
            Expr::parse(&ok).unwrap().eval(&Map::new()).unwrap(),
            json!(1)
        );
    }

    #[test]
    fn and_or_short_circuit_so_errors_on_the_dead_side_do_not_matter() {
        assert_eq!(run("false and 1 / 0").unwrap(), json!(false));
        assert_eq!(run("true or 1 / 0").unwrap(), json!(true));
        assert_eq!(
            run("true and 1 / 0").unwrap_err(),
            ExprError::DivisionByZero
        );
    }

    #[test]
    fn var_paths_parse_and_display() {
        let p = VarPath::parse("now.utc.dayOfWeek").unwrap();
        assert_eq!(p.root(), "now");
        assert_eq!(p.to_string(), "now.utc.dayOfWeek");
        for bad in ["", "1a", "a..b", "a.", ".a", "a-b", "a b"] {
            assert!(VarPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(VarPath::parse("list.0").is_ok());
    }

    #[test]
    fn display_and_truthiness() {
        assert_eq!(display_value(&json!(null)), "");
        assert_eq!(display_value(&json!(3.0)), "3");
        assert_eq!(display_value(&json!(3.25)), "3.25");
        assert_eq!(display_value(&json!("x")), "x");
        for (v, t) in [
            (json!(null), false),
            (json!(0), false),
            (json!(0.0), false),
            (json!(""), false),
            (json!(false), false),
            (json!("0"), true),
            (json!([]), true),
            (json!(-1), true),
        ] {
            assert_eq!(truthy(&v), t, "{v}");
        }
    }
}
