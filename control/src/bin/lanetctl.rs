fn main() -> std::process::ExitCode {
    lanet_control::ctl::main()
}
