//! Built-in kinds for demos, tests and benchmarks.
//!
//! - `noop`: does nothing; output `null`.
//! - `echo`: output = payload.
//! - `sleep`: `{"ms": N}` waits N milliseconds (without holding a thread).
//! - `cpu`: `{"iterations": N}` runs a real CPU-bound loop on the blocking pool;
//!   the output is a checksum that depends on every iteration.
//! - `fail`: `{"times": N}` fails attempts 1..=N (retryable), then succeeds;
//!   `{"permanent": true}` always fails permanently.
//! - `square`: `{"n": X}` or a bare number X → X², the origin text's map example;
//!   a chunk of a job's range, `{"from": A, "to": B}`, → `[A², …, B²]`.
//! - `words`: counts like `wc`: a text, or `{"lines": [...]}` (a `lines:` job
//!   split) → `{"lines": L, "words": W, "bytes": B}`; a `sum` gather adds them up.

use crate::handler::{handler_fn, HandlerError, Registry, TaskContext};
use serde_json::{json, Value};
use std::time::Duration;

/// A registry with every built-in kind.
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    r.register("noop", handler_fn(|_| async { Ok(Value::Null) }))
        .register(
            "echo",
            handler_fn(|t: TaskContext| async move { Ok(t.payload) }),
        )
        .register("sleep", handler_fn(sleep))
        .register("cpu", handler_fn(cpu))
        .register("fail", handler_fn(fail))
        .register("square", handler_fn(square))
        .register("words", handler_fn(words));
    r
}

fn field_u64(payload: &Value, field: &str) -> Result<u64, HandlerError> {
    payload.get(field).and_then(Value::as_u64).ok_or_else(|| {
        HandlerError::permanent(format!(
            "payload needs a non-negative integer `{field}`, got {payload}"
        ))
    })
}

async fn sleep(t: TaskContext) -> Result<Value, HandlerError> {
    let ms = field_u64(&t.payload, "ms")?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json!({"slept_ms": ms}))
}

async fn cpu(t: TaskContext) -> Result<Value, HandlerError> {
    let n = field_u64(&t.payload, "iterations")?;
    let sum = tokio::task::spawn_blocking(move || checksum(n))
        .await
        .map_err(|e| HandlerError::retryable(format!("cpu work did not finish: {e}")))?;
    Ok(json!({"iterations": n, "checksum": sum.to_string()}))
}

/// An xorshift walk: each step depends on the last, so no step can be skipped.
pub fn checksum(iterations: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    x
}

async fn fail(t: TaskContext) -> Result<Value, HandlerError> {
    if t.payload.get("permanent").and_then(Value::as_bool) == Some(true) {
        return Err(HandlerError::permanent("fail: asked to fail permanently"));
    }
    let times = t.payload.get("times").and_then(Value::as_u64).unwrap_or(1);
    if u64::from(t.attempt) <= times {
        Err(HandlerError::retryable(format!(
            "fail: attempt {} of the first {times} that fail",
            t.attempt
        )))
    } else {
        Ok(json!({"succeeded_on_attempt": t.attempt}))
    }
}

async fn square(t: TaskContext) -> Result<Value, HandlerError> {
    if let (Some(from), Some(to)) = (
        t.payload.get("from").and_then(Value::as_i64),
        t.payload.get("to").and_then(Value::as_i64),
    ) {
        if to < from || to - from >= 10_000_000 {
            return Err(HandlerError::permanent(format!(
                "square: `from` {from} to `to` {to} is not a range of at most 10000000 numbers"
            )));
        }
        // i128: squares of any i64 fit.
        return Ok(Value::Array(
            (from..=to)
                .map(|x| {
                    let y = i128::from(x) * i128::from(x);
                    i64::try_from(y).map_or_else(|_| json!(y as f64), |v| json!(v))
                })
                .collect(),
        ));
    }
    let x = t
        .payload
        .as_f64()
        .or_else(|| t.payload.get("n").and_then(Value::as_f64))
        .ok_or_else(|| {
            HandlerError::permanent(format!("square needs a number, got {}", t.payload))
        })?;
    let y = x * x;
    Ok(if y.fract() == 0.0 && y.abs() < 9.0e15 {
        json!(y as i64)
    } else {
        json!(y)
    })
}

async fn words(t: TaskContext) -> Result<Value, HandlerError> {
    let text = match &t.payload {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("lines").and_then(Value::as_array) {
            Some(lines) => lines
                .iter()
                .map(|l| l.as_str().map(|s| format!("{s}\n")))
                .collect::<Option<String>>()
                .ok_or_else(|| HandlerError::permanent("words: `lines` must be strings"))?,
            None => {
                return Err(HandlerError::permanent(
                    "words: an object payload needs `lines`",
                ))
            }
        },
        other => {
            return Err(HandlerError::permanent(format!(
                "words needs a text or {{\"lines\": [...]}}, got {other}"
            )))
        }
    };
    Ok(json!({
        "lines": text.matches('\n').count(),
        "words": text.split_whitespace().count(),
        "bytes": text.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kind: &str, payload: Value, attempt: u32) -> TaskContext {
        TaskContext {
            id: "t".into(),
            kind: kind.into(),
            payload,
            attempt,
            key: None,
            job: None,
        }
    }

    async fn run(kind: &str, payload: Value, attempt: u32) -> Result<Value, HandlerError> {
        builtin()
            .get(kind)
            .unwrap()
            .handle(ctx(kind, payload, attempt))
            .await
    }

    #[tokio::test]
    async fn builtins_do_what_they_say() {
        assert_eq!(run("noop", json!(1), 1).await, Ok(Value::Null));
        assert_eq!(
            run("echo", json!({"a": [1]}), 1).await,
            Ok(json!({"a": [1]}))
        );
        assert_eq!(run("square", json!(7), 1).await, Ok(json!(49)));
        assert_eq!(run("square", json!({"n": 3}), 1).await, Ok(json!(9)));
        assert_eq!(
            run("square", json!({"from": -1, "to": 2}), 1).await,
            Ok(json!([1, 0, 1, 4]))
        );
        assert_eq!(
            run("words", json!({"lines": ["to be or", "", "not  to be"]}), 1).await,
            Ok(json!({"lines": 3, "words": 6, "bytes": 21}))
        );
        assert_eq!(
            run("words", json!("a b\n"), 1).await,
            Ok(json!({"lines": 1, "words": 2, "bytes": 4}))
        );
        assert!(run("words", json!(5), 1).await.is_err());
        let out = run("cpu", json!({"iterations": 1000}), 1).await.unwrap();
        assert_eq!(out["checksum"], checksum(1000).to_string());
        assert_ne!(checksum(1000), checksum(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_waits_the_asked_time() {
        let start = tokio::time::Instant::now();
        run("sleep", json!({"ms": 250}), 1).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test]
    async fn fail_fails_the_first_attempts_then_succeeds() {
        assert!(matches!(
            run("fail", json!({"times": 2}), 1).await,
            Err(HandlerError::Retryable(_))
        ));
        assert!(matches!(
            run("fail", json!({"times": 2}), 2).await,
            Err(HandlerError::Retryable(_))
        ));
        assert_eq!(
            run("fail", json!({"times": 2}), 3).await.unwrap()["succeeded_on_attempt"],
            3
        );
        assert!(matches!(
            run("fail", json!({"permanent": true}), 9).await,
            Err(HandlerError::Permanent(_))
        ));
    }

    #[tokio::test]
    async fn bad_payloads_are_permanent_errors() {
        let e = run("sleep", json!("soon"), 1).await.unwrap_err();
        assert!(
            matches!(e, HandlerError::Permanent(ref m) if m.contains("`ms`")),
            "{e}"
        );
    }
}
