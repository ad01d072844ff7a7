//! The `injixo-sync` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use injixo_sync::cli::{Cli, Command, TestKind};
use injixo_sync::config::{self, Config};
use injixo_sync::types::Emits;
use injixo_sync::{app, check, demo, import, init, logging, preview, send_test, service, status};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.config.unwrap_or_else(config::default_config_path);
    let result = match cli.command {
        Command::Run => Config::load(&path)
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                logging::init(&config.log);
                app::main(config).map_err(anyhow::Error::from)
            })
            .map(|()| ExitCode::SUCCESS),
        Command::Check { offline } => check::main(&path, offline),
        Command::Status { json } => status::main(&path, json),
        Command::Dead { action } => status::dead(&path, action),
        Command::Parked { action } => injixo_sync::parked::main(&path, action),
        Command::Agents { json } => status::agents(&path, json),
        Command::Queues { action, json } => status::queues(&path, action, json),
        Command::Resend {
            since,
            agent,
            source,
        } => status::resend(&path, &since, agent, source),
        Command::Import {
            source,
            from,
            since,
        } => import::main(&path, &source, from, since.as_deref()),
        Command::Init {
            sample,
            acd,
            integration_id,
            timezone,
            connection_file,
            since,
            output,
        } => {
            let from = match (sample, acd) {
                (Some(sample), _) => init::From::Sample(sample),
                (None, Some(name)) => init::From::Acd(
                    name,
                    init::acd::Site {
                        integration_id,
                        timezone,
                        connection_file,
                        since,
                    },
                ),
                (None, None) => unreachable!("clap requires --sample or --acd"),
            };
            init::main(from, output)
        }
        Command::Preview {
            source,
            parked,
            from,
            rows,
            json,
        } => preview::main(&path, source.as_deref(), from, (rows, parked), json),
        Command::SendTest { kind, source } => {
            let emits = match kind {
                TestKind::ContactEvent => Emits::ContactEvents,
                TestKind::AgentStatus => Emits::AgentStatuses,
            };
            send_test::main(&path, emits, source.as_deref())
        }
        Command::Demo { records } => demo::main(records),
        Command::Service { action } => service::main(&path, action, |config, stop| {
            app::main_until(config, stop).map_err(anyhow::Error::from)
        }),
        Command::FakeApi { listen, key } => demo::serve_fake_api(listen, &key),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
