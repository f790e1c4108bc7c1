//! The `interceptor` binary: the command line of the library.
fn main() {
    interceptor::cli::main()
}
