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
    /// Write a complete, commented configuration for a sample export (to stdout, or --output):
    /// encoding, delimiter, header, timestamp format, durations and value lookups guessed
    /// from the sample, each guess commented, ending with the preview of its first rows.
    Init {
        /// A sample export file (CSV, TSV or NDJSON).
        #[arg(long, value_name = "PATH")]
        sample: PathBuf,
        /// Where to write the configuration (refused if it exists).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show what a source would send, row by row, without writing to the outbox or sending
    /// anything: the first rows of a file, or a poller's first page from initial_cursor.
    /// Exit 1 when a row would be parked.
    Preview {
        /// The source (its name in the configuration).
        #[arg(long)]
        source: String,
        /// The file to read (files sources; default: the oldest file the source would read).
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
        /// How many rows.
        #[arg(long, default_value_t = 20)]
        rows: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
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
    /// List the agent identifiers sent so far, per configuration id and external system.
    Agents {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The queues sent so far, and contact events held back because they bring a new name
    /// for a known queue identifier (injixo would make a second queue of it).
    Queues {
        #[command(subcommand)]
        action: Option<QueueAction>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Send kept records again (after mapping agent ids in injixo, say): those whose own time
    /// (startTime, timestamp) is at or after --since.
    Resend {
        /// A date (2024-01-31, midnight UTC) or an RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        since: String,
        /// Only this agent identifier's records.
        #[arg(long, value_name = "ID")]
        agent: Option<String>,
        /// Only this source's records.
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
    },
    /// The Windows service: install (automatic start, restart on failure), uninstall, start,
    /// stop. Run as Administrator.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Serve the fake injixo API (as in `demo`) until stopped: for trying a configuration
    /// without an injixo account. GET /_fake/stats counts what it accepted.
    #[command(hide = true)]
    FakeApi {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9851")]
        listen: std::net::SocketAddr,
        /// The API key it accepts.
        #[arg(long)]
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// Accept the new name: its held records are sent (injixo makes a queue of it).
    Confirm(QueueChoice),
    /// Give the held records of that name up.
    Drop(QueueChoice),
}

#[derive(Debug, clap::Args)]
pub struct QueueChoice {
    /// The configuration id (meta.integrationConfigurationId).
    #[arg(long)]
    pub integration_id: i64,
    /// The queue identifier.
    #[arg(long)]
    pub identifier: String,
    /// The new name, as `queues` shows it.
    #[arg(long)]
    pub name: String,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ServiceAction {
    /// Register the service: automatic (delayed) start, restart on failure, this executable
    /// and the configuration given with --config (or the default); creates
    /// %ProgramData%\injixo-sync with a config.example.toml and a logs folder.
    Install,
    /// Stop the service if it runs and remove it; configuration, outbox and logs stay.
    Uninstall,
    /// Start the service and wait until it runs.
    Start,
    /// Stop the service and wait until it has drained.
    Stop,
    /// What the service control manager starts.
    #[command(hide = true)]
    Run,
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
