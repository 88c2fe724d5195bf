//! The `comfygate` command: serve the gateway, manage accounts and tokens, import ComfyUI-Login.
#![forbid(unsafe_code)]

mod cli;

/// glibc's allocator was a sixth of the proxy's instructions per request (bench/profile.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
