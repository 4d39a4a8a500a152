//! Command-line handling shared by the bench tools (`benches/loadgen.rs`, `benches/wsbot.rs`),
//! included by each with `#[path = "common/args.rs"] mod args;`: `--option value` pairs read
//! in order, errors that name the option, and the exit on a bad command line.

use std::fmt::Display;
use std::str::FromStr;

/// The command line after the program name, one option at a time.
pub struct Cli {
    it: std::iter::Skip<std::env::Args>,
    /// The option being read, for the error messages.
    opt: String,
}

impl Cli {
    pub fn from_env() -> Self {
        Cli {
            it: std::env::args().skip(1),
            opt: String::new(),
        }
    }

    /// The next option, skipping `--bench` (cargo passes it to bench targets).
    pub fn next_opt(&mut self) -> Option<String> {
        loop {
            let o = self.it.next()?;
            if o != "--bench" {
                self.opt.clone_from(&o);
                return Some(o);
            }
        }
    }

    /// The value that follows the current option.
    pub fn value(&mut self) -> Result<String, String> {
        self.it
            .next()
            .ok_or_else(|| format!("{} needs a value", self.opt))
    }

    /// The value that follows the current option, parsed; the error names the option.
    pub fn parse<T: FromStr>(&mut self) -> Result<T, String>
    where
        T::Err: Display,
    {
        let v = self.value()?;
        v.parse().map_err(|e| format!("{}: {e}", self.opt))
    }

    /// The error for an option the tool does not know.
    pub fn unknown(&self) -> String {
        format!("unknown option {}", self.opt)
    }
}

/// The parsed arguments, or `prog: error` on stderr and exit status 2.
pub fn or_exit<T>(prog: &str, parsed: Result<T, String>) -> T {
    parsed.unwrap_or_else(|e| {
        eprintln!("{prog}: {e}");
        std::process::exit(2);
    })
}
