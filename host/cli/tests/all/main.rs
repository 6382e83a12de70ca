//! The `capbridge` binary's tests, in one test binary (as wasmtime's `tests/all`): every module
//! runs the real `capbridge` binary (`CARGO_BIN_EXE_capbridge`) as a child process.

mod capabilities;
mod cli;
mod commands;
mod replay;
