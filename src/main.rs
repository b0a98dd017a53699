//! `nym-mixnode`: parse the command line and hand over to the library.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    nym_mixnode::cli::main()
}
