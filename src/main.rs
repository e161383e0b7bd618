#[global_allocator]
static ALLOCATOR: geopromo::allocator::SplitAllocator = geopromo::allocator::SplitAllocator;

fn main() -> std::process::ExitCode {
    geopromo::allocator::configure();
    geopromo::cli::run()
}
