//! What went wrong in the configuration, and where: the source ([`Origin`]), the key and,
//! when the format tells it, the line.

use std::fmt;
use std::path::PathBuf;

/// Where a layer of configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file.
    File(PathBuf),
    /// Command-line flags.
    Flags,
    /// The `-dev` preset or built-in defaults.
    Defaults,
    /// The n-th `-hcl` flag (from 0).
    Fragment(usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Flags => f.write_str("command line"),
            Origin::Defaults => f.write_str("defaults"),
            Origin::Fragment(i) => write!(f, "-hcl flag {}", i + 1),
        }
    }
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The source, when one source is to blame.
    pub origin: Option<Origin>,
    /// The key (`ports.http`, `services[0].checks[1].interval`).
    pub key: String,
    /// The line of the key (or of the syntax error) in the source, when its format tells
    /// it (HCL).
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = self.line.map(|l| format!(":{l}")).unwrap_or_default();
        match &self.origin {
            Some(origin) if !self.key.is_empty() => {
                write!(f, "{origin}{line}: {}: {}", self.key, self.message)
            }
            Some(origin) => write!(f, "{origin}{line}: {}", self.message),
            None if !self.key.is_empty() => write!(f, "{}: {}", self.key, self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// All problems found, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

pub(super) fn problem(origin: Option<&Origin>, key: &str, message: impl Into<String>) -> Problem {
    Problem {
        origin: origin.cloned(),
        key: key.to_owned(),
        line: None,
        message: message.into(),
    }
}
