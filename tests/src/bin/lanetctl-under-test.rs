//! `lanetctl`, built with the integration tests so that they never run a stale binary of
//! it (Cargo gives a test only its own package's binaries).

fn main() -> std::process::ExitCode {
    lanet_control::ctl::main()
}
