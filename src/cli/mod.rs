//! Headless subcommands. They parse flags into the same plain config structs the app uses and
//! drive the same worker.

pub mod bench;
pub mod dataset;
pub mod generate;
