//! The warm-container agent: a small server inside a pre-started container
//! that runs a task's command on request, so a task starts in milliseconds
//! instead of paying for a container start. Not written yet; the name is
//! reserved so that images already carry the `/bin/agent` symlink.

use crate::cli::Fail;

/// Exit code 125 is what `docker run` uses when the engine, not the command,
/// failed: the agent's absence is a setup problem, not the task's.
pub fn run(_args: &[String]) -> Result<(), Fail> {
    Err(Fail::Exit(125, "not yet implemented".into()))
}
