//! Command-line definitions (clap) and nothing else. A command's own arguments (`DeadAction`,
//! `ParkedAction`, `QueueAction`, `ServiceAction`) are defined beside the command, which derives clap's traits
//! for them, so the library never depends on this file.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::parked::ParkedAction;
use crate::service::ServiceAction;
use crate::status::{DeadAction, QueueAction};

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
    /// What could not become records (parked input): list it grouped by reason, map it again
    /// after fixing the map (retry), or give it up.
    Parked {
        #[command(subcommand)]
        action: ParkedAction,
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
        #[arg(
            long,
            value_name = "PATH",
            required_unless_present = "acd",
            conflicts_with = "acd"
        )]
        sample: Option<PathBuf>,
        /// A ready configuration for a named ACD (`--acd list` names them): its sources,
        /// queries, keys and cursors, tested against the vendor's tables.
        #[arg(long, value_name = "NAME")]
        acd: Option<String>,
        /// With --acd: the integration's configuration id.
        #[arg(long, value_name = "N", requires = "acd")]
        integration_id: Option<u64>,
        /// With --acd: the zone the ACD writes local times in (e.g. Europe/Berlin).
        #[arg(long, value_name = "TZ", requires = "acd")]
        timezone: Option<String>,
        /// With --acd: the file holding the ACD database's URL.
        #[arg(long, value_name = "PATH", requires = "acd")]
        connection_file: Option<PathBuf>,
        /// With --acd: where the history read starts (a date, midnight in --timezone, or an
        /// RFC 3339 time); default: the day the configuration is written.
        #[arg(long, value_name = "DATE", requires = "acd")]
        since: Option<String>,
        /// Where to write the configuration (refused if it exists).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show what a source would send, row by row, without writing to the outbox or sending
    /// anything: the first rows of a file, or a poller's first page from initial_cursor.
    /// Exit 1 when a row would be parked.
    Preview {
        /// The source (its name in the configuration).
        #[arg(long, required_unless_present = "parked")]
        source: Option<String>,
        /// What the parked input (of --source, or of every source) would become now, before
        /// `parked retry`; reads the state file, writes nothing.
        #[arg(long, conflicts_with = "from")]
        parked: bool,
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

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TestKind {
    ContactEvent,
    AgentStatus,
}
