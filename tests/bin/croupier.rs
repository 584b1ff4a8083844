//! The `croupier` command line, built inside the test package so that integration tests
//! can run it as a separate process (and kill it) via `CARGO_BIN_EXE_croupier-it-bin`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    croupier_dataplane::cli::main()
}
