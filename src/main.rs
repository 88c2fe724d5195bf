//! The `comfygate` command: serve the gateway, manage accounts and tokens, import ComfyUI-Login.
#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
