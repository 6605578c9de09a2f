//! `relay PORT`: joins its stdin and stdout to a TCP connection to
//! `PORT` on the container's own loopback. The server runs it in an HTTP
//! task's container (whose network is `none`: loopback is all there is)
//! as the warm agent's task, and speaks HTTP through it: no port is
//! published, no traffic crosses a bridge.
//!
//! Connects to 127.0.0.1, then ::1, retrying for [`CONNECT_WAIT`] (the
//! agent has seen the port answer before it said it was ready). Copies
//! stdin to the socket until stdin ends, and the socket to stdout until the
//! peer closes; then exits 0. Exit 3 when nothing answers on the port, 1
//! when the connection breaks.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{expect_args, parse, raw_stdin, raw_stdout, Fail};

/// How long to keep trying to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(5);

pub fn run(args: &[String]) -> Result<(), Fail> {
    expect_args(args, 1)?;
    let port: u16 = parse("PORT", &args[0])?;
    let socket = connect(port)?;
    let mut to_server = socket
        .try_clone()
        .map_err(|e| Fail::io("cannot share the socket", e))?;
    let mut stdin = raw_stdin()?;
    // Stdin's end is not the request's end: the server closes the
    // connection once it has answered (the request says `Connection:
    // close`), so the socket's write half stays open.
    thread::spawn(move || {
        let _ = io::copy(&mut stdin, &mut to_server);
    });
    copy_out(socket, raw_stdout()?)
}

fn connect(port: u16) -> Result<TcpStream, Fail> {
    let addresses = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        let mut last = None;
        for address in &addresses {
            match TcpStream::connect(address) {
                Ok(socket) => {
                    let _ = socket.set_nodelay(true);
                    return Ok(socket);
                }
                Err(e) => last = Some(e),
            }
        }
        if Instant::now() >= deadline {
            let why = last.map(|e| e.to_string()).unwrap_or_default();
            return Err(Fail::Exit(
                3,
                format!("nothing answers on port {port} in the container ({why})"),
            ));
        }
        thread::sleep(RETRY);
    }
}

/// The answer, as it comes, to stdout.
fn copy_out(mut socket: TcpStream, mut out: impl Write) -> Result<(), Fail> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out
                .write_all(&buf[..n])
                .map_err(|e| Fail::io("cannot write to stdout", e))?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Fail::io("the connection to the task's server broke", e)),
        }
    }
}
