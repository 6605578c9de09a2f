//! Signal names and numbers, shared by the tools (`killself`) and the
//! `tcp-task` command (`kill -s`), which includes this file by path.

/// Linux signal numbers (the same on x86_64 and aarch64) for the names
/// `killself` and `tcp-task kill -s` accept.
pub const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STOP", 19),
];
