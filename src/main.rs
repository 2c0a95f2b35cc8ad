//! The `proconsul` binary: argument parsing, logging set-up and exit codes. Everything
//! else lives in the library (`proconsul::Agent`) and the workspace crates.

mod cli;

/// mimalloc instead of glibc's malloc: the agent's hot paths (many small answers at once,
/// blocking reads woken together) spent a quarter to a third of their time in glibc's
/// allocator, contending on its arena locks and consolidating its free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run(std::env::args_os().collect())
}
