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
    /// List, resend or give up records the API refused.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
    },
    /// Read a source's history into the outbox once, with progress; resumable.
    Import {
        /// The source (its name in the configuration).
        #[arg(long)]
        source: String,
        /// A directory or file to read instead of the source's `path`.
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
        /// Only files modified since this date (2024-01-31) or RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Send one visible test record and print the API's whole answer (first-time set-up).
    SendTest {
        /// Which kind of record.
        #[arg(long = "type", value_enum)]
        kind: TestKind,
        /// The source whose configuration id to use (default: the first that fits).
        #[arg(long)]
        source: Option<String>,
    },
    /// Run the whole pipeline against an embedded fake API with generated ACD data.
    Demo {
        /// How many contact events to generate.
        #[arg(long, default_value_t = 5000)]
        records: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadAction {
    /// Show dead letters with the API's answer for each.
    List {
        /// Only this source's.
        #[arg(long)]
        source: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Make dead letters pending again (after fixing the cause in injixo or the data).
    Retry {
        /// Record ids as shown by `dead list`.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Give dead letters up for good.
    Drop {
        /// Record ids as shown by `dead list`.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TestKind {
    ContactEvent,
    AgentStatus,
}
