//! Gathers: how the outputs of a job's sub-tasks combine into the job's output.
//!
//! Built-in gathers run inside the gatherer; a `chord:KIND` gather runs the
//! handler of `KIND` on the worker that gathers, with the collected outputs as its
//! payload. Outputs are passed in sub-task index order; a tolerated failure is
//! `None` (left out by `sum`, `count` and `concat`, `null` in `collect`).

use crate::task::json_type;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// How sub-task outputs combine. Written as text: `collect`, `sum`, `count`,
/// `concat`, `chord:KIND`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GatherSpec {
    /// Every output in index order, as one array.
    Collect,
    /// The sum of every number in the outputs: numbers, arrays of them, and
    /// objects summed key by key (so `{"words": 3}` outputs add up per key).
    Sum,
    /// How many outputs are neither `null` nor `false`.
    Count,
    /// Array outputs joined into one array, or string outputs into one string.
    Concat,
    /// Run a task of this kind over the collected outputs (a Celery-style chord
    /// callback); its output is the job's output, its failure the job's.
    Chord(String),
}

impl GatherSpec {
    /// Combines `outputs` (index order; `None` = a tolerated failure). Chords
    /// collect here and run elsewhere.
    pub fn apply(&self, outputs: &[Option<Value>]) -> Result<Value, String> {
        let present = || {
            outputs
                .iter()
                .enumerate()
                .filter_map(|(i, o)| Some((i, o.as_ref()?)))
        };
        match self {
            GatherSpec::Collect | GatherSpec::Chord(_) => Ok(Value::Array(
                outputs
                    .iter()
                    .map(|o| o.clone().unwrap_or(Value::Null))
                    .collect(),
            )),
            GatherSpec::Count => Ok(Value::from(
                present()
                    .filter(|(_, v)| !matches!(v, Value::Null | Value::Bool(false)))
                    .count() as u64,
            )),
            GatherSpec::Sum => {
                let mut acc = Acc::Zero;
                for (i, v) in present() {
                    acc = acc.add(v).map_err(|e| format!("sub-task {i}: {e}"))?;
                }
                Ok(acc.into_value())
            }
            GatherSpec::Concat => concat(present()),
        }
    }
}

fn concat<'a>(mut items: impl Iterator<Item = (usize, &'a Value)>) -> Result<Value, String> {
    let Some((i, first)) = items.next() else {
        return Ok(Value::Array(vec![]));
    };
    match first {
        Value::Array(a) => {
            let mut out = a.clone();
            for (i, v) in items {
                match v {
                    Value::Array(a) => out.extend(a.iter().cloned()),
                    other => {
                        return Err(format!(
                            "sub-task {i}: concat joins arrays, got {}",
                            json_type(other)
                        ))
                    }
                }
            }
            Ok(Value::Array(out))
        }
        Value::String(s) => {
            let mut out = s.clone();
            for (i, v) in items {
                match v {
                    Value::String(s) => out.push_str(s),
                    other => {
                        return Err(format!(
                            "sub-task {i}: concat joins strings, got {}",
                            json_type(other)
                        ))
                    }
                }
            }
            Ok(Value::String(out))
        }
        other => Err(format!(
            "sub-task {i}: concat joins arrays or strings, got {}",
            json_type(other)
        )),
    }
}

/// A running sum. Integers stay exact (i128) until a float joins in.
enum Acc {
    Zero,
    Int(i128),
    Float(f64),
    Object(BTreeMap<String, Acc>),
}

impl Acc {
    fn add(self, v: &Value) -> Result<Acc, String> {
        match (self, v) {
            (acc, Value::Array(items)) => items.iter().try_fold(acc, Acc::add),
            (Acc::Object(_), Value::Number(_))
            | (Acc::Int(_) | Acc::Float(_), Value::Object(_)) => {
                Err("cannot add an object and a number".into())
            }
            (acc, Value::Number(n)) => {
                let x = match n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
                {
                    Some(i) => Acc::Int(i),
                    None => Acc::Float(n.as_f64().unwrap_or(f64::NAN)),
                };
                Ok(match (acc, x) {
                    (Acc::Zero, x) => x,
                    // Past i128, precision gives way rather than the sum overflowing.
                    (Acc::Int(a), Acc::Int(b)) => a
                        .checked_add(b)
                        .map_or(Acc::Float(a as f64 + b as f64), Acc::Int),
                    (Acc::Int(a), Acc::Float(b)) | (Acc::Float(b), Acc::Int(a)) => {
                        Acc::Float(a as f64 + b)
                    }
                    (Acc::Float(a), Acc::Float(b)) => Acc::Float(a + b),
                    _ => unreachable!("objects were handled above"),
                })
            }
            (acc, Value::Object(fields)) => {
                let mut map = match acc {
                    Acc::Object(m) => m,
                    _ => BTreeMap::new(),
                };
                for (k, v) in fields {
                    let entry = map.remove(k).unwrap_or(Acc::Zero);
                    map.insert(k.clone(), entry.add(v).map_err(|e| format!("`{k}`: {e}"))?);
                }
                Ok(Acc::Object(map))
            }
            (_, other) => Err(format!("cannot sum {}", json_type(other))),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Acc::Zero => Value::from(0),
            Acc::Int(i) => i64::try_from(i)
                .map(Value::from)
                .or_else(|_| u64::try_from(i).map(Value::from))
                .unwrap_or_else(|_| Number::from_f64(i as f64).map_or(Value::Null, Value::Number)),
            Acc::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Acc::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k, v.into_value()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

impl FromStr for GatherSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "collect" => Ok(GatherSpec::Collect),
            "sum" => Ok(GatherSpec::Sum),
            "count" => Ok(GatherSpec::Count),
            "concat" => Ok(GatherSpec::Concat),
            _ => match s.strip_prefix("chord:") {
                Some("") => {
                    Err("`chord:` needs the kind of the callback task, e.g. chord:report".into())
                }
                Some(kind) => Ok(GatherSpec::Chord(kind.to_string())),
                None => Err(format!(
                    "unknown gather `{s}`: expected collect, sum, count, concat or chord:KIND"
                )),
            },
        }
    }
}

impl TryFrom<String> for GatherSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<GatherSpec> for String {
    fn from(g: GatherSpec) -> String {
        g.to_string()
    }
}

impl fmt::Display for GatherSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatherSpec::Collect => f.write_str("collect"),
            GatherSpec::Sum => f.write_str("sum"),
            GatherSpec::Count => f.write_str("count"),
            GatherSpec::Concat => f.write_str("concat"),
            GatherSpec::Chord(kind) => write!(f, "chord:{kind}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(values: &[Value]) -> Vec<Option<Value>> {
        values.iter().cloned().map(Some).collect()
    }

    #[test]
    fn specs_parse_and_print_back() {
        for s in ["collect", "sum", "count", "concat", "chord:report"] {
            assert_eq!(s.parse::<GatherSpec>().unwrap().to_string(), s);
        }
        let e = "avg".parse::<GatherSpec>().unwrap_err();
        assert!(
            e.contains("unknown gather `avg`") && e.contains("chord:KIND"),
            "{e}"
        );
        assert!("chord:"
            .parse::<GatherSpec>()
            .unwrap_err()
            .contains("needs the kind"));
    }

    #[test]
    fn collect_keeps_index_order_and_marks_failures_null() {
        let out = GatherSpec::Collect
            .apply(&[Some(json!(1)), None, Some(json!("x"))])
            .unwrap();
        assert_eq!(out, json!([1, null, "x"]));
    }

    #[test]
    fn sum_adds_numbers_arrays_and_objects_by_key() {
        let sum = |v: &[Value]| GatherSpec::Sum.apply(&all(v));
        assert_eq!(sum(&[json!(1), json!(4), json!(9)]).unwrap(), json!(14));
        assert_eq!(sum(&[]).unwrap(), json!(0));
        assert_eq!(sum(&[json!([1, 2]), json!(3)]).unwrap(), json!(6));
        assert_eq!(sum(&[json!(1), json!(0.5)]).unwrap(), json!(1.5));
        assert_eq!(
            sum(&[
                json!({"words": 3, "lines": 1}),
                json!({"words": 4, "bytes": 2})
            ])
            .unwrap(),
            json!({"bytes": 2, "lines": 1, "words": 7})
        );
        // Exact past i64: u64 values still add without rounding.
        assert_eq!(
            sum(&[json!(u64::MAX - 1), json!(1)]).unwrap(),
            json!(u64::MAX)
        );
        assert_eq!(
            GatherSpec::Sum.apply(&[Some(json!(2)), None]).unwrap(),
            json!(2)
        );
    }

    #[test]
    fn sum_names_the_sub_task_it_cannot_add() {
        let e = GatherSpec::Sum
            .apply(&all(&[json!(1), json!("two")]))
            .unwrap_err();
        assert_eq!(e, "sub-task 1: cannot sum a string");
        let e = GatherSpec::Sum
            .apply(&all(&[json!({"a": 1}), json!(2)]))
            .unwrap_err();
        assert!(
            e.contains("sub-task 1") && e.contains("object and a number"),
            "{e}"
        );
        let e = GatherSpec::Sum
            .apply(&all(&[json!({"a": 1}), json!({"a": null})]))
            .unwrap_err();
        assert_eq!(e, "sub-task 1: `a`: cannot sum null");
    }

    #[test]
    fn count_counts_truthy_outputs_of_succeeded_sub_tasks() {
        let out = GatherSpec::Count
            .apply(&[
                Some(json!(true)),
                Some(json!(false)),
                Some(Value::Null),
                None,
                Some(json!(0)),
            ])
            .unwrap();
        assert_eq!(out, json!(2));
    }

    #[test]
    fn concat_joins_arrays_or_strings_but_not_both() {
        let c = |v: &[Value]| GatherSpec::Concat.apply(&all(v));
        assert_eq!(c(&[json!([1]), json!([2, 3])]).unwrap(), json!([1, 2, 3]));
        assert_eq!(c(&[json!("ab"), json!("c")]).unwrap(), json!("abc"));
        assert_eq!(c(&[]).unwrap(), json!([]));
        assert_eq!(
            c(&[json!([1]), json!("x")]).unwrap_err(),
            "sub-task 1: concat joins arrays, got a string"
        );
        assert!(c(&[json!(5)]).unwrap_err().contains("arrays or strings"));
    }
}
