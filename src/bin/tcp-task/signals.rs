//! Ctrl-C and SIGTERM, as one stream of "please stop" requests.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Listens from creation on, so a signal that arrives while the program is
/// busy elsewhere is not lost.
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

    /// The next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = recv(&mut self.interrupt) => {}
            _ = recv(&mut self.terminate) => {}
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
