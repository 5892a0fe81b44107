//! Component tests: the worker framework against the embedded broker, in-process.
//! Each test starts its own broker, so topics and groups never collide.

mod jobs;
mod pipeline;
mod reliability;
mod retention;
mod scheduling;
mod support;
