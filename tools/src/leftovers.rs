//! Applets that test a container reset (tools/src/reset.rs): `leave` leaves
//! behind what a careless or hostile task could, and `look` reports what a
//! task can see of such leftovers. In a container that was reset between
//! the two, `look` prints the same as in a fresh one.
//!
//! | applet        | behaviour |
//! |---------------|-----------|
//! | `leave WHAT…` | leaves, for each WHAT: `files` (`/tmp/left` and `/dev/shm/left`), `process` (a `sleep 300` in the background), `sysv` (a System V shared memory segment, semaphore set and message queue), `posix` (a POSIX shared memory object `/dev/shm/posix-left` of 4 KiB and a POSIX message queue `/dev/mqueue/left`), `workdir` (`/tmp/work/left`, in its working directory, which must not be `/`), `devnull` (removes `/dev/null`); prints `left WHAT` for each |
//! | `look`        | `cwd=DIR`, `tmp=`, `shm=`, `mqueue=` (the entries of `/tmp`, `/dev/shm`, `/dev/mqueue`, sorted, comma-separated), `processes=N` (besides PID 1 and itself), `sysv=SHM SEM MSG` (counts), one per line |

use crate::cli::{print_line, Fail};
use crate::sys;
use std::fs;
use std::process::{Command, Stdio};

pub fn leave(args: &[String]) -> Result<(), Fail> {
    if args.is_empty() {
        return Err(Fail::usage(
            "leave what? files, process, sysv, posix, workdir or devnull",
        ));
    }
    for what in args {
        match what.as_str() {
            "files" => {
                write("/tmp/left")?;
                write("/dev/shm/left")?;
            }
            "process" => {
                Command::new("sleep")
                    .arg("300")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| Fail::io("cannot start sleep", e))?;
            }
            "sysv" => sys::make_sysv_objects().map_err(|e| Fail::io("System V IPC", e))?,
            "posix" => {
                let shm = fs::File::create("/dev/shm/posix-left")
                    .map_err(|e| Fail::io("cannot create /dev/shm/posix-left", e))?;
                shm.set_len(4096)
                    .map_err(|e| Fail::io("cannot size /dev/shm/posix-left", e))?;
                // A POSIX message queue is a file of the mqueue file
                // system: created by open(O_CREAT), as mq_open does.
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open("/dev/mqueue/left")
                    .map_err(|e| Fail::io("cannot create /dev/mqueue/left", e))?;
            }
            "workdir" => {
                let here = std::env::current_dir()
                    .map_err(|e| Fail::io("cannot read the working directory", e))?;
                if here == std::path::Path::new("/") {
                    return Err(Fail::Exit(
                        1,
                        "leave workdir: the working directory is /".into(),
                    ));
                }
                write("left")?;
            }
            "devnull" => {
                fs::remove_file("/dev/null").map_err(|e| Fail::io("cannot remove /dev/null", e))?
            }
            other => return Err(Fail::usage(format!("cannot leave {other:?}"))),
        }
        print_line(format_args!("left {what}"))?;
    }
    Ok(())
}

fn write(path: &str) -> Result<(), Fail> {
    fs::write(path, "left by a task\n").map_err(|e| Fail::io(&format!("cannot write {path}"), e))
}

pub fn look(_args: &[String]) -> Result<(), Fail> {
    let cwd =
        std::env::current_dir().map_err(|e| Fail::io("cannot read the working directory", e))?;
    print_line(format_args!("cwd={}", cwd.display()))?;
    for (name, dir) in [
        ("tmp", "/tmp"),
        ("shm", "/dev/shm"),
        ("mqueue", "/dev/mqueue"),
    ] {
        print_line(format_args!("{name}={}", entries(dir).join(",")))?;
    }
    let me = sys::pid();
    let others = fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid != 1 && *pid != me)
                .count()
        })
        .unwrap_or(0);
    print_line(format_args!("processes={others}"))?;
    let count = |kind: &str| {
        fs::read_to_string(format!("/proc/sysvipc/{kind}"))
            .map(|t| t.lines().skip(1).count())
            .unwrap_or(0)
    };
    print_line(format_args!(
        "sysv={} {} {}",
        count("shm"),
        count("sem"),
        count("msg")
    ))
}

fn entries(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
