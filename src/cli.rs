//! Command-line definitions (clap) and nothing else.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "injixo-sync",
    version,
    about = "Delivers contact-center data to the injixo import API, durably and exactly once into a local outbox."
)]
pub struct Cli {
    /// The configuration file [default: $INJIXO_SYNC_CONFIG, then /etc/injixo-sync/config.toml,
    /// on Windows %ProgramData%\injixo-sync\config.toml]
    #[arg(long, global = true, env = "INJIXO_SYNC_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGTERM or Ctrl-C.
    Run,
    /// Validate the configuration and the environment; list every problem.
    Check {
        /// Do not contact the API.
        #[arg(long)]
        offline: bool,
    },
    /// Show what the outbox holds: per lane and per source.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole pipeline against an embedded fake API with generated ACD data.
    Demo {
        /// How many contact events to generate.
        #[arg(long, default_value_t = 5000)]
        records: usize,
    },
}
