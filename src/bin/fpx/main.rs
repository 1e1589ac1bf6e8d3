//! The `fpx` command line: argument parsing (`args.rs`) and the commands (`commands.rs`,
//! `generate_cmd.rs`, `tune_cmd.rs`) over the `fpx` library.

mod args;
mod commands;
mod generate_cmd;
mod tune_cmd;

use args::{Cli, Command};
use clap::Parser as _;

fn main() {
    // Die quietly on a closed pipe (`fpx inspect m.onnx | head`) instead of panicking in println!.
    // SAFETY: setting a signal disposition to its default at start-up, before any threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A value the library's parser refuses (an unknown scheme, CPU or target) is an error
        // like every other `error:` of fpx (exit 1); usage errors keep clap's exit code 2, and
        // --help/--version exit 0.
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::InvalidValue | clap::error::ErrorKind::ValueValidation) => {
            let _ = e.print();
            std::process::exit(1)
        }
        Err(e) => e.exit(),
    };
    let res = match &cli.command {
        Command::Compile(a) => commands::compile(a),
        Command::Run(a) => commands::run(a),
        Command::Report(a) => commands::report(a),
        Command::Bench(a) => commands::bench(a),
        Command::Generate(a) => generate_cmd::generate(a),
        Command::Tune(a) => tune_cmd::tune(a),
        Command::Inspect(a) => commands::inspect(a),
        Command::Membw(a) => commands::membw(a),
        Command::Peak(a) => commands::peak(a),
    };
    if let Err(e) = res {
        eprintln!("error: {}", message(&e));
        std::process::exit(1);
    }
}

/// The error and its causes in one line ([`fpx::error_message`]: the Python package and the C API
/// show the same text).
fn message(e: &anyhow::Error) -> String {
    fpx::error_message(e.as_ref())
}
