//! External-process handlers: any program can serve a kind, as in Hadoop streaming.
//!
//! The payload is written to the program's stdin as JSON (a string payload as its
//! raw text), stdout becomes the output (JSON when it parses, else a string), and a
//! non-zero exit fails the task with the tail of stderr as the error: retryable,
//! unless the code is one of the handler's `permanent_exit_codes`. Only commands
//! named in configuration are ever run; nothing in a task chooses the program.
//!
//! Each run gets its own process group. If the attempt is abandoned (its timeout
//! passed, or the worker stops), the whole group is killed, so a shell script's
//! children die with it instead of running on unobserved.

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
            .process_group(0)
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
        let _group = child.id().map(GroupKiller);
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
            let code = out.status.code();
            let what = code.map_or_else(|| "a signal".to_string(), |c| format!("code {c}"));
            let msg = format!("`{}` exited with {what}: {tail}", self.cfg.command);
            let permanent = code.is_some_and(|c| self.cfg.permanent_exit_codes.contains(&c));
            return Err(if permanent {
                HandlerError::Permanent(msg)
            } else {
                HandlerError::Retryable(msg)
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let text = text.trim_end();
        Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
    }
}

/// Kills a child's process group when dropped. After a normal exit the group is
/// usually empty and the kill finds nothing, which is fine.
struct GroupKiller(u32);

impl Drop for GroupKiller {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: killpg(2) takes plain integers; the group id is our child's pid,
        // which leads the group created by `process_group(0)`.
        unsafe {
            libc::killpg(self.0 as libc::pid_t, libc::SIGKILL);
        }
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
            permanent_exit_codes: vec![9],
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
            permanent_exit_codes: vec![],
        });
        assert!(matches!(
            missing.handle(ctx(Value::Null)).await,
            Err(HandlerError::Permanent(_))
        ));
        let e = sh("exit 9").handle(ctx(Value::Null)).await.unwrap_err();
        assert!(
            matches!(e, HandlerError::Permanent(_)),
            "9 is configured permanent: {e:?}"
        );
    }

    #[tokio::test]
    async fn an_abandoned_run_kills_the_program_and_its_children() {
        let marker = std::env::temp_dir().join(format!("sluice-kill-{}.done", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        // A child of the shell that would write the marker after 1.5 s.
        let script = format!("(sleep 1.5; touch {}) & wait", marker.display());
        let h = sh(&script);
        let run = h.handle(ctx(Value::Null));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), run)
                .await
                .is_err()
        );
        tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
        assert!(
            !marker.exists(),
            "the grandchild outlived the abandoned attempt"
        );
    }
}
