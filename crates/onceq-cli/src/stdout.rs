//! Standard output for the `out!`, `outln!` and `try_out!` macros: a closed pipe ends the
//! command quietly instead of panicking.

/// Writes `args` to standard output and flushes it.
pub(crate) fn try_write_stdout(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args).and_then(|()| stdout.flush())
}

/// Writes to standard output for `out!` and `outln!`.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    if let Err(error) = try_write_stdout(args) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("onceq: writing to standard output: {error}");
        std::process::exit(1);
    }
}
