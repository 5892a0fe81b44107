//! Resource needs of tasks and capacities of workers.
//!
//! A task's `resources` is a JSON object of resource name → amount, for example
//! `{"cpu": 2, "memory_mb": 512}`. Names are free (`gpu`, `licenses`, …); amounts
//! are non-negative numbers in whatever unit the name says. One key is reserved:
//! `"class"`, a string naming the worker pool the task must run in
//! ([`crate::routing`]). A worker declares its capacity with the same names in
//! `worker.scheduler.capacity`; it starts a task only while the needs of its
//! running tasks plus the new one fit.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Amounts by resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Amounts(pub BTreeMap<String, f64>);

/// What a task asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    /// The pool the task must run in.
    pub class: Option<String>,
    /// Amounts it holds while it runs.
    pub amounts: Amounts,
}

impl Needs {
    /// Reads a task's `resources` field; `None` needs nothing.
    pub fn parse(resources: Option<&Value>) -> Result<Needs, String> {
        let Some(v) = resources else {
            return Ok(Needs::default());
        };
        let obj = match v {
            Value::Null => return Ok(Needs::default()),
            Value::Object(o) => o,
            other => {
                return Err(format!(
                    "`resources` must be an object of name to amount, found {other}"
                ))
            }
        };
        let mut needs = Needs::default();
        for (name, value) in obj {
            if name == "class" {
                match value {
                    Value::String(s) => {
                        crate::routing::check_class(s)?;
                        needs.class = Some(s.clone());
                    }
                    other => {
                        return Err(format!(
                            "`resources.class` must be a string naming a pool, found {other}"
                        ))
                    }
                }
                continue;
            }
            match value.as_f64() {
                Some(n) if n >= 0.0 && n.is_finite() => {
                    needs.amounts.0.insert(name.clone(), n);
                }
                _ => {
                    return Err(format!(
                        "`resources.{name}` must be a non-negative number, found {value}"
                    ))
                }
            }
        }
        Ok(needs)
    }
}

impl Amounts {
    /// Whether `self + extra` stays within `capacity` for every name `extra`
    /// uses. Names the capacity does not list have capacity zero.
    pub fn fits_with(&self, extra: &Amounts, capacity: &Amounts) -> bool {
        extra.0.iter().all(|(name, need)| {
            *need <= 0.0 || {
                let used = self.0.get(name).copied().unwrap_or(0.0);
                let cap = capacity.0.get(name).copied().unwrap_or(0.0);
                // A tolerance for sums of fractions such as 0.1 + 0.2.
                used + need <= cap + 1e-9
            }
        })
    }

    /// The first name whose amount exceeds `capacity` on its own.
    pub fn exceeding(&self, capacity: &Amounts) -> Option<(&str, f64, f64)> {
        self.0.iter().find_map(|(name, need)| {
            let cap = capacity.0.get(name).copied().unwrap_or(0.0);
            (*need > cap + 1e-9).then_some((name.as_str(), *need, cap))
        })
    }

    /// Adds `other` in place.
    pub fn add(&mut self, other: &Amounts) {
        for (name, n) in &other.0 {
            *self.0.entry(name.clone()).or_default() += n;
        }
    }

    /// Subtracts `other` in place (never below zero).
    pub fn sub(&mut self, other: &Amounts) {
        for (name, n) in &other.0 {
            if let Some(v) = self.0.get_mut(name) {
                *v = (*v - n).max(0.0);
            }
        }
    }

    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|v| *v <= 0.0)
    }
}

impl fmt::Display for Amounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn amounts(pairs: &[(&str, f64)]) -> Amounts {
        Amounts(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn needs_parse_names_amounts_and_class() {
        let n = Needs::parse(Some(&json!({"cpu": 2, "memory_mb": 512.5, "class": "gpu"}))).unwrap();
        assert_eq!(n.class.as_deref(), Some("gpu"));
        assert_eq!(n.amounts, amounts(&[("cpu", 2.0), ("memory_mb", 512.5)]));
        assert_eq!(Needs::parse(None).unwrap(), Needs::default());
        assert_eq!(Needs::parse(Some(&Value::Null)).unwrap(), Needs::default());
    }

    #[test]
    fn bad_needs_say_which_field() {
        for (v, needle) in [
            (json!([1]), "must be an object"),
            (json!({"cpu": -1}), "resources.cpu"),
            (json!({"cpu": "two"}), "resources.cpu"),
            (json!({"class": 3}), "resources.class"),
            (json!({"class": "a/b"}), "topic name"),
        ] {
            let e = Needs::parse(Some(&v)).unwrap_err();
            assert!(e.contains(needle), "{v}: {e}");
        }
    }

    #[test]
    fn fitting_counts_unknown_names_as_zero_capacity() {
        let cap = amounts(&[("cpu", 4.0)]);
        let mut used = amounts(&[("cpu", 3.0)]);
        assert!(used.fits_with(&amounts(&[("cpu", 1.0)]), &cap));
        assert!(!used.fits_with(&amounts(&[("cpu", 1.5)]), &cap));
        assert!(!used.fits_with(&amounts(&[("gpu", 1.0)]), &cap));
        assert!(used.fits_with(&amounts(&[("gpu", 0.0)]), &cap));
        assert_eq!(
            amounts(&[("gpu", 1.0)]).exceeding(&cap),
            Some(("gpu", 1.0, 0.0))
        );
        used.sub(&amounts(&[("cpu", 3.0)]));
        assert!(used.is_empty());
    }
}
