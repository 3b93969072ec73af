//! `lanet-router --config FILE`: the gateway daemon. See the crate documentation and
//! `config/example-router.toml`.

fn main() -> std::process::ExitCode {
    lanet_router::daemon::main()
}
