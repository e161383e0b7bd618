fn main() -> std::process::ExitCode {
    geopromo::cli::run()
}
