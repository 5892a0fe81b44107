//! Split specs: how a job's input becomes sub-task payloads.
//!
//! - `range:START..END[:CHUNK]` — the integers START to END, both included. Without
//!   CHUNK each sub-task's payload is one number; with it, `{"from": A, "to": B}`
//!   covering CHUNK numbers (the last chunk may be shorter).
//! - `lines:PATH[:N]` — the lines of a text file, N per sub-task (default 1), as
//!   `{"lines": [...], "first_line": K}` with K counted from 1.
//! - `jsonl:PATH` — one sub-task per non-empty line, the line's JSON value as payload.

use serde_json::{json, Value};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Most sub-tasks one job may have; a larger range needs a CHUNK.
pub const MAX_SUB_TASKS: u64 = 10_000_000;

/// How a job's input is split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// Integers `start..=end`, `chunk` per sub-task (one number each when `None`).
    Range {
        /// First number.
        start: i64,
        /// Last number (included).
        end: i64,
        /// Numbers per sub-task.
        chunk: Option<u64>,
    },
    /// Lines of a file, `per_task` per sub-task.
    Lines {
        /// The file.
        path: PathBuf,
        /// Lines per sub-task.
        per_task: usize,
    },
    /// One JSON value per line of a file.
    Jsonl {
        /// The file.
        path: PathBuf,
    },
}

/// Why a split spec or its input is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The spec itself is malformed.
    #[error("bad split `{spec}`: {why}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong and what is expected.
        why: String,
    },
    /// The input file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// The system's reason.
        cause: String,
    },
    /// A line of a JSON-lines file is not JSON.
    #[error("{path} line {line}: not JSON: {cause}")]
    Line {
        /// The file.
        path: String,
        /// Line number, from 1.
        line: usize,
        /// The parser's reason.
        cause: String,
    },
    /// The input has nothing to split.
    #[error("{0} gives no sub-tasks")]
    Empty(String),
}

const EXPECTED: &str = "expected range:START..END[:CHUNK], lines:PATH[:N] or jsonl:PATH";

impl FromStr for Split {
    type Err = SplitError;

    fn from_str(spec: &str) -> Result<Split, SplitError> {
        let bad = |why: String| SplitError::Spec {
            spec: spec.to_string(),
            why,
        };
        let (source, rest) = spec
            .split_once(':')
            .ok_or_else(|| bad(EXPECTED.to_string()))?;
        match source {
            "range" => {
                let (bounds, chunk) = match rest.split_once(':') {
                    Some((b, c)) => (b, Some(c)),
                    None => (rest, None),
                };
                let (a, b) = bounds
                    .split_once("..")
                    .ok_or_else(|| bad("a range is START..END, e.g. range:1..100".into()))?;
                let int = |s: &str, what: &str| {
                    s.trim()
                        .parse::<i64>()
                        .map_err(|_| bad(format!("{what} `{s}` is not an integer")))
                };
                let (start, end) = (int(a, "START")?, int(b, "END")?);
                if end < start {
                    return Err(bad(format!("END {end} is below START {start}")));
                }
                let chunk = match chunk {
                    None => None,
                    Some(c) => match c.trim().parse::<u64>() {
                        Ok(0) | Err(_) => {
                            return Err(bad(format!("CHUNK `{c}` is not a positive integer")))
                        }
                        Ok(n) => Some(n),
                    },
                };
                let split = Split::Range { start, end, chunk };
                let n = split.range_len().expect("a range");
                if n > MAX_SUB_TASKS {
                    return Err(bad(format!(
                        "{n} sub-tasks, over the limit of {MAX_SUB_TASKS}; add a larger :CHUNK"
                    )));
                }
                Ok(split)
            }
            "lines" => {
                // The path may hold colons; a trailing `:N` is the count only when numeric.
                let (path, per_task) = match rest.rsplit_once(':') {
                    Some((p, n)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => {
                        match n.parse::<usize>() {
                            Ok(0) | Err(_) => {
                                return Err(bad(format!("N `{n}` must be a positive integer")))
                            }
                            Ok(n) => (p, n),
                        }
                    }
                    _ => (rest, 1),
                };
                if path.is_empty() {
                    return Err(bad("lines: needs a file, e.g. lines:book.txt:100".into()));
                }
                Ok(Split::Lines {
                    path: path.into(),
                    per_task,
                })
            }
            "jsonl" if rest.is_empty() => {
                Err(bad("jsonl: needs a file, e.g. jsonl:inputs.jsonl".into()))
            }
            "jsonl" => Ok(Split::Jsonl { path: rest.into() }),
            other => Err(bad(format!("unknown source `{other}`; {EXPECTED}"))),
        }
    }
}

impl Split {
    /// Sub-tasks of a range, without building them.
    fn range_len(&self) -> Option<u64> {
        match self {
            Split::Range { start, end, chunk } => {
                let numbers = (*end as i128 - *start as i128 + 1) as u64;
                Some(numbers.div_ceil(chunk.unwrap_or(1)))
            }
            _ => None,
        }
    }

    /// Every sub-task payload, in index order.
    pub fn payloads(&self) -> Result<Vec<Value>, SplitError> {
        let out: Vec<Value> = match self {
            Split::Range { start, end, chunk } => match chunk {
                None => (*start..=*end).map(Value::from).collect(),
                Some(c) => {
                    let c = *c as i128;
                    let (start, end) = (*start as i128, *end as i128);
                    let mut v = Vec::new();
                    let mut from = start;
                    while from <= end {
                        let to = (from + c - 1).min(end);
                        v.push(json!({"from": from as i64, "to": to as i64}));
                        from = to + 1;
                    }
                    v
                }
            },
            Split::Lines { path, per_task } => {
                let text = read(path)?;
                let lines: Vec<&str> = text.lines().collect();
                lines
                    .chunks(*per_task)
                    .enumerate()
                    .map(|(i, c)| json!({"lines": c, "first_line": i * per_task + 1}))
                    .collect()
            }
            Split::Jsonl { path } => {
                let text = read(path)?;
                let mut v = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    v.push(serde_json::from_str(line).map_err(|e| SplitError::Line {
                        path: path.display().to_string(),
                        line: i + 1,
                        cause: e.to_string(),
                    })?);
                }
                v
            }
        };
        if out.is_empty() {
            return Err(SplitError::Empty(self.to_string()));
        }
        Ok(out)
    }
}

fn read(path: &PathBuf) -> Result<String, SplitError> {
    std::fs::read_to_string(path).map_err(|e| SplitError::Read {
        path: path.display().to_string(),
        cause: e.to_string(),
    })
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Split::Range {
                start,
                end,
                chunk: None,
            } => write!(f, "range:{start}..{end}"),
            Split::Range {
                start,
                end,
                chunk: Some(c),
            } => write!(f, "range:{start}..{end}:{c}"),
            Split::Lines { path, per_task } => write!(f, "lines:{}:{per_task}", path.display()),
            Split::Jsonl { path } => write!(f, "jsonl:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn parse(s: &str) -> Result<Split, SplitError> {
        s.parse()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn ranges_include_both_ends() {
        let s = parse("range:1..5").unwrap();
        assert_eq!(
            s.payloads().unwrap(),
            vec![json!(1), json!(2), json!(3), json!(4), json!(5)]
        );
        assert_eq!(
            parse("range:-2..-2").unwrap().payloads().unwrap(),
            vec![json!(-2)]
        );
        assert_eq!(s.to_string(), "range:1..5");
    }

    #[test]
    fn chunks_cover_the_range_once() {
        let s = parse("range:1..10:4").unwrap();
        assert_eq!(
            s.payloads().unwrap(),
            vec![
                json!({"from": 1, "to": 4}),
                json!({"from": 5, "to": 8}),
                json!({"from": 9, "to": 10})
            ]
        );
        assert_eq!(
            parse("range:0..999999:1000")
                .unwrap()
                .payloads()
                .unwrap()
                .len(),
            1000
        );
    }

    #[test]
    fn bad_specs_say_what_is_expected() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("range:5..1"),
            "bad split `range:5..1`: END 1 is below START 5"
        );
        assert!(msg("range:1-5").contains("START..END"));
        assert!(msg("range:a..5").contains("START `a` is not an integer"));
        assert!(msg("range:1..5:0").contains("CHUNK `0` is not a positive integer"));
        assert!(msg("range:1..5:x").contains("CHUNK `x`"));
        assert!(msg("range:0..99999999999").contains("add a larger :CHUNK"));
        assert!(msg("words:x").contains("unknown source `words`"));
        assert!(msg("nothing").contains("expected range:START..END"));
        assert!(msg("lines:").contains("needs a file"));
        assert!(msg("lines:f.txt:0").contains("positive"));
        assert!(msg("jsonl:").contains("needs a file"));
    }

    #[test]
    fn lines_are_grouped_and_numbered() {
        let f = file("a b\nc\n\nd e f\ng\n");
        let spec = format!("lines:{}:2", f.path().display());
        let payloads = parse(&spec).unwrap().payloads().unwrap();
        assert_eq!(
            payloads,
            vec![
                json!({"lines": ["a b", "c"], "first_line": 1}),
                json!({"lines": ["", "d e f"], "first_line": 3}),
                json!({"lines": ["g"], "first_line": 5}),
            ]
        );
        let one = parse(&format!("lines:{}", f.path().display())).unwrap();
        assert_eq!(one.payloads().unwrap().len(), 5);
    }

    #[test]
    fn jsonl_lines_become_payloads_and_bad_lines_are_named() {
        let f = file("{\"n\": 1}\n\n[2]\n");
        let s = parse(&format!("jsonl:{}", f.path().display())).unwrap();
        assert_eq!(s.payloads().unwrap(), vec![json!({"n": 1}), json!([2])]);
        let bad = file("1\nnope\n");
        let e = parse(&format!("jsonl:{}", bad.path().display()))
            .unwrap()
            .payloads()
            .unwrap_err();
        assert!(matches!(e, SplitError::Line { line: 2, .. }), "{e}");
        let e = parse("jsonl:/no/such/file")
            .unwrap()
            .payloads()
            .unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read /no/such/file"),
            "{e}"
        );
        let empty = file("");
        let e = parse(&format!("lines:{}", empty.path().display()))
            .unwrap()
            .payloads()
            .unwrap_err();
        assert!(e.to_string().ends_with("gives no sub-tasks"), "{e}");
    }
}
