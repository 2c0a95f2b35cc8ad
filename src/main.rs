//! The `proconsul` binary: argument parsing, logging set-up and exit codes. Everything
//! else lives in the library (`proconsul::Agent`) and the workspace crates.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run(std::env::args_os().collect())
}
