//! SIGINT and SIGTERM, as one stream of "please stop" requests.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Ctrl-C's signal number.
pub const SIGINT: i32 = 2;
/// `kill`'s default signal number.
pub const SIGTERM: i32 = 15;

/// Listens from creation on, so a signal that arrives while the program is
/// busy elsewhere waits to be seen instead of being lost.
pub struct Interrupts {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Interrupts {
    pub fn new() -> Interrupts {
        Interrupts {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Waits for the next interrupt and returns its signal number.
    pub async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = recv(&mut self.interrupt) => SIGINT,
            _ = recv(&mut self.terminate) => SIGTERM,
        }
    }
}

async fn recv(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        // No handler could be installed: this source never fires.
        None => std::future::pending().await,
    }
}
