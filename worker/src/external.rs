//! External-process handlers: any program can serve a kind, as in Hadoop streaming.
//!
//! The payload is written to the program's stdin as JSON (a string payload as its
//! raw text), stdout becomes the output (JSON when it parses, else a string), and a
//! non-zero exit fails the task with the tail of stderr as the error. Only commands
//! named in configuration are ever run; nothing in a task chooses the program.
//! If the handler future is dropped (the worker stops before the program ends),
//! the child is killed.

use crate::handler::{Handler, HandlerError, TaskContext};
use async_trait::async_trait;
use serde_json::Value;
use sluice_common::config::ExternalHandlerConfig;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Runs a configured program per task.
pub struct External {
    cfg: ExternalHandlerConfig,
}

impl External {
    /// A handler for the configured program.
    pub fn new(cfg: ExternalHandlerConfig) -> Self {
        External { cfg }
    }
}

#[async_trait]
impl Handler for External {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let mut child = Command::new(&self.cfg.command)
            .args(&self.cfg.args)
            .envs(&self.cfg.env)
            .env("SLUICE_TASK_ID", &task.id)
            .env("SLUICE_TASK_KIND", &task.kind)
            .env("SLUICE_TASK_ATTEMPT", task.attempt.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                HandlerError::permanent(format!("cannot start `{}`: {e}", self.cfg.command))
            })?;
        let input = match &task.payload {
            Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Write concurrently with reading output, so a program that answers before
        // reading all input cannot deadlock us.
        let writer = async move {
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let (_, out) = tokio::join!(writer, child.wait_with_output());
        let out =
            out.map_err(|e| HandlerError::retryable(format!("`{}`: {e}", self.cfg.command)))?;
        if !out.status.success() {
            let tail = tail(&out.stderr, self.cfg.stderr_tail_bytes);
            let code = out
                .status
                .code()
                .map_or_else(|| "a signal".to_string(), |c| format!("code {c}"));
            return Err(HandlerError::retryable(format!(
                "`{}` exited with {code}: {tail}",
                self.cfg.command
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let text = text.trim_end();
        Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
    }
}

fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    let s = String::from_utf8_lossy(&bytes[start..]);
    let s = s.trim();
    if s.is_empty() {
        "(no stderr)".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sh(script: &str) -> External {
        External::new(ExternalHandlerConfig {
            command: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Default::default(),
            stderr_tail_bytes: 16,
        })
    }

    fn ctx(payload: Value) -> TaskContext {
        TaskContext {
            id: "id-1".into(),
            kind: "k".into(),
            payload,
            attempt: 2,
            key: None,
            job: None,
        }
    }

    #[tokio::test]
    async fn stdin_in_stdout_out() {
        let out = sh("cat").handle(ctx(json!({"a": 1}))).await.unwrap();
        assert_eq!(out, json!({"a": 1}));
        let out = sh("wc -w")
            .handle(ctx(json!("one two three")))
            .await
            .unwrap();
        assert_eq!(out, json!(3));
        let out = sh("echo \"$SLUICE_TASK_ID:$SLUICE_TASK_ATTEMPT\"")
            .handle(ctx(Value::Null))
            .await
            .unwrap();
        assert_eq!(out, json!("id-1:2"));
    }

    #[tokio::test]
    async fn failures_carry_the_stderr_tail() {
        // 16 bytes of tail: the last 15 characters and the newline.
        let e = sh("echo 0123456789abcdefXYZ >&2; exit 3")
            .handle(ctx(Value::Null))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            HandlerError::Retryable("`sh` exited with code 3: 456789abcdefXYZ".into())
        );
        let missing = External::new(ExternalHandlerConfig {
            command: "/no/such/program".into(),
            args: vec![],
            env: Default::default(),
            stderr_tail_bytes: 10,
        });
        assert!(matches!(
            missing.handle(ctx(Value::Null)).await,
            Err(HandlerError::Permanent(_))
        ));
    }
}
