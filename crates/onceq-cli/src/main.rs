//! The `onceq` binary: parses the command line and hands it to the library (`onceq_cli::run`).

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    onceq_cli::run(onceq_cli::Cli::parse_args(&args), &args)
}
