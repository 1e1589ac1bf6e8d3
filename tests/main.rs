//! End-to-end tests of the `fpx` package: one binary with modules (each test binary links the
//! whole stack, so there is only one).

mod artifact;
mod budget;
mod capi;
mod cli;
mod common;
mod contract;
mod epilogue;
mod generate;
mod half;
mod memory;
mod models;
mod nn_ops;
mod node_tests;
mod quant;
mod tune;
mod zoo;
