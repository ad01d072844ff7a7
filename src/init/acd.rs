//! `injixo-sync init --acd NAME`: a complete configuration for a named ACD, from a recipe that
//! knows where that ACD keeps its call and agent history, which of its rows change after they
//! are written, what it calls answered, and in which zone it writes times. Each recipe is a
//! commented configuration (`recipes/NAME.toml`) with four marks filled from the flags:
//!
//! * `@integration_id`: the configuration id (`--integration-id`), else a TODO;
//! * `@connection`: the file holding the database URL (`--connection-file`), else a TODO
//!   naming a default path;
//! * `@timezone`: the zone of the ACD's local times (`--timezone`), else a TODO;
//! * `@since`: where the first poll starts reading (`--since`, a date in that zone), else the
//!   day the configuration is written.
//!
//! Each recipe is tested against the vendor's own table layout in a real database
//! (`tests/recipes.rs`); `docs/recipes/NAME.md` says what was checked and what is inferred.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::render::{API_AND_STATE, toml_str};

/// A ready configuration for one ACD.
pub struct Recipe {
    pub name: &'static str,
    /// What it reads, in one line.
    pub reads: &'static str,
    /// What its connection file holds, as an example (empty for recipes that read files).
    connection: &'static str,
    template: &'static str,
}

/// Every recipe, as `init --acd list` names them.
pub const RECIPES: &[Recipe] = &[
    Recipe {
        name: "3cx",
        reads: "3CX V18 (and V20 before Update 6) queues: callcent_queuecalls, callcent_ag_queuestatus",
        connection: "postgres://injixo:PASSWORD@3cx-host:5480/database_single",
        template: include_str!("recipes/3cx.toml"),
    },
    Recipe {
        name: "3cx-v20u6",
        reads: "3CX V20 Update 6 and later: cdroutput (queue passages, answered by an extension)",
        connection: "postgres://injixo:PASSWORD@3cx-host:5480/database_single",
        template: include_str!("recipes/3cx-v20u6.toml"),
    },
    Recipe {
        name: "asterisk-queue-log",
        reads: "Asterisk/FreePBX queues: the queue_log file (calls per queue, agent logins, pauses, calls)",
        connection: "",
        template: include_str!("recipes/asterisk-queue-log.toml"),
    },
    Recipe {
        name: "asterisk-realtime",
        reads: "Asterisk/FreePBX queues: the realtime queue_log table in MySQL/MariaDB",
        connection: "mysql://injixo:PASSWORD@pbx-db/asterisk",
        template: include_str!("recipes/asterisk-realtime.toml"),
    },
    Recipe {
        name: "asterisk-cdr",
        reads: "Asterisk call detail records: cdr_csv's Master.csv, one record per call leg",
        connection: "",
        template: include_str!("recipes/asterisk-cdr.toml"),
    },
    Recipe {
        name: "avaya-cms",
        reads: "Avaya CMS over ODBC (Informix): hsplit (calls per split/skill and interval, expanded), haglog (agent logins)",
        connection: "odbc:Driver={IBM INFORMIX ODBC DRIVER};Host=CMS_HOST;Server=cms_net;Service=50001;Protocol=onsoctcp;Database=cms;UID=injixo;PWD=PASSWORD",
        template: include_str!("recipes/avaya-cms.toml"),
    },
    Recipe {
        name: "cisco-ucce",
        reads: "Cisco UCCE/ICM HDS over ODBC (SQL Server): Termination_Call_Detail (skill group legs), Agent_State_Trace",
        connection: "odbc:Driver={ODBC Driver 18 for SQL Server};Server=HDS_HOST;Database=INSTANCE_hds;UID=injixo;PWD=PASSWORD",
        template: include_str!("recipes/cisco-ucce.toml"),
    },
    Recipe {
        name: "genesys-infomart",
        reads: "Genesys Engage Info Mart (PostgreSQL): MEDIATION_SEGMENT_FACT (queue segments), SM_MEDIA_NEUTRAL_STATE_FACT (agent states)",
        connection: "postgres://injixo:PASSWORD@infomart-db/infomart",
        template: include_str!("recipes/genesys-infomart.toml"),
    },
    Recipe {
        name: "issabel-callcenter",
        reads: "Issabel/Elastix call center module: call_entry (queue calls), audit (sessions, breaks)",
        connection: "mysql://injixo:PASSWORD@issabel-host/call_center",
        template: include_str!("recipes/issabel-callcenter.toml"),
    },
    Recipe {
        name: "vicidial",
        reads: "VICIdial: vicidial_closer_log (inbound calls per in-group), vicidial_agent_log (agent time)",
        connection: "mysql://injixo:PASSWORD@vicidial-db/asterisk",
        template: include_str!("recipes/vicidial.toml"),
    },
];

/// What the flags of `init --acd` tell about the site.
#[derive(Debug, Default, Clone)]
pub struct Site {
    pub integration_id: Option<u64>,
    pub timezone: Option<String>,
    pub connection_file: Option<PathBuf>,
    /// A date (midnight in `timezone`) or an RFC 3339 time.
    pub since: Option<String>,
}

/// The recipe named `name`, or an error listing them.
pub fn recipe(name: &str) -> anyhow::Result<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name).ok_or_else(|| {
        anyhow::anyhow!(
            "no recipe for {name:?}; `injixo-sync init --acd list` names them: {}",
            RECIPES
                .iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// `init --acd list`.
pub fn list() -> String {
    let width = RECIPES.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in RECIPES {
        let _ = writeln!(out, "{:width$}  {}", r.name, r.reads);
    }
    out.push_str(
        "\n`injixo-sync init --acd NAME [--integration-id N] [--timezone TZ] \
         [--connection-file PATH] [--since DATE] [--output PATH]` writes its configuration; \
         docs/recipes/NAME.md says what it reads and what is inferred.\n",
    );
    out
}

/// The configuration `recipe` gives for `site`.
pub fn render(recipe: &Recipe, site: &Site) -> anyhow::Result<String> {
    let zone = match &site.timezone {
        Some(name) => Some(
            jiff::tz::TimeZone::get(name)
                .map_err(|e| anyhow::anyhow!("--timezone {name:?}: {e}"))?,
        ),
        None => None,
    };
    let since = match &site.since {
        Some(text) => since(text, zone.as_ref())?,
        None => {
            let zone = zone.clone().unwrap_or(jiff::tz::TimeZone::UTC);
            midnight(zone.to_datetime(jiff::Timestamp::now()).date(), &zone)?
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# injixo-sync configuration written by `injixo-sync init --acd {}`.\n\
         # Next: fill in what is marked TODO; `injixo-sync --config THIS_FILE check` tries it\n\
         # (the databases and the API key); `injixo-sync --config THIS_FILE preview --source NAME`\n\
         # shows what a source's first rows become; then start the daemon (`injixo-sync --config\n\
         # THIS_FILE run`, or the service). config.example.toml documents every key.\n",
        recipe.name
    );
    if site.since.is_none() && recipe.template.contains("@since") {
        let _ = writeln!(
            out,
            "# Database sources start reading at {since} (the day this was written); for older\n\
             # history, write init again with --since DATE, or set initial_cursor before the first\n\
             # start.\n"
        );
    }
    out.push_str(API_AND_STATE);
    for line in recipe.template.lines() {
        match line.trim() {
            "@integration_id" => match site.integration_id {
                Some(id) => {
                    let _ = writeln!(out, "integration_id = {id}");
                }
                None => out.push_str(
                    "# TODO: the configuration id from the integration's tile in injixo, e.g.\n\
                     # integration_id = 1234\n",
                ),
            },
            "@connection" => match &site.connection_file {
                Some(path) => {
                    let _ = writeln!(
                        out,
                        "connection_file = {}",
                        toml_str(&path.display().to_string())
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "# TODO: a file only the service user may read, holding the database's \
                         connection, e.g.\n# {}\nconnection_file = \"/etc/injixo-sync/acd-db.url\"",
                        recipe.connection
                    );
                }
            },
            "@timezone" => match &site.timezone {
                Some(name) => {
                    let _ = writeln!(out, "timezone = {}", toml_str(name));
                }
                None => {
                    let machine = jiff::tz::TimeZone::system()
                        .iana_name()
                        .unwrap_or("UTC")
                        .to_owned();
                    let _ = writeln!(
                        out,
                        "# TODO: the zone the ACD writes its local times in, e.g. \"Europe/Berlin\"; this\n\
                         # machine's is {machine:?}. Unset, they are read as UTC.\n\
                         # timezone = {machine:?}"
                    );
                }
            },
            _ => {
                out.push_str(&line.replace("@since", &since.to_string()));
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// `--since`: a date is midnight in the ACD's zone (UTC without one).
fn since(text: &str, zone: Option<&jiff::tz::TimeZone>) -> anyhow::Result<jiff::Timestamp> {
    let utc = jiff::tz::TimeZone::UTC;
    let zone = zone.unwrap_or(&utc);
    // A time with an offset is that instant; a date is its midnight and a time without an
    // offset that wall-clock time, both in the ACD's zone.
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts);
    }
    if text.len() == 10
        && let Ok(date) = text.parse::<jiff::civil::Date>()
    {
        return midnight(date, zone);
    }
    match text.parse::<jiff::civil::DateTime>() {
        Ok(t) => zone
            .to_ambiguous_timestamp(t)
            .compatible()
            .map_err(|e| anyhow::anyhow!("--since {text:?}: {e}")),
        Err(_) => anyhow::bail!(
            "--since {text:?} is neither a date like 2024-01-31 nor a time like \
             2024-01-31T08:00:00 (in --timezone) or 2024-01-31T08:00:00Z"
        ),
    }
}

/// The start of `date` in `zone`.
fn midnight(date: jiff::civil::Date, zone: &jiff::tz::TimeZone) -> anyhow::Result<jiff::Timestamp> {
    zone.to_ambiguous_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
        .compatible()
        .map_err(|e| anyhow::anyhow!("midnight of {date}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every recipe, with the flags given, is a configuration that loads without a problem
    /// except the API key and the database URL files, which a site writes.
    #[test]
    fn every_recipe_renders_a_configuration_that_loads() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("db.url");
        std::fs::write(&url, "mysql://injixo@127.0.0.1/asterisk").unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k").unwrap();
        for r in RECIPES {
            let site = Site {
                integration_id: Some(1234),
                timezone: Some("Europe/Berlin".into()),
                connection_file: Some(url.clone()),
                since: Some("2024-05-01".into()),
            };
            assert_eq!(
                r.template.contains("@connection"),
                !r.connection.is_empty(),
                "{}: a recipe that reads a database gives an example of its connection",
                r.name
            );
            let text = render(r, &site).unwrap();
            for mark in ["@integration_id", "@connection", "@timezone", "@since"] {
                assert!(!text.contains(mark), "{}: {mark} is left: {text}", r.name);
            }
            let text = text
                .replace("/etc/injixo-sync/api-key", &key.display().to_string())
                .replace(
                    "/var/lib/injixo-sync/outbox.db",
                    &dir.path().join("outbox.db").display().to_string(),
                );
            let file = dir.path().join(format!("{}.toml", r.name));
            std::fs::write(&file, &text).unwrap();
            if let Err(e) = crate::config::Config::load(&file) {
                panic!("{}: {e}\n{text}", r.name);
            }
            if text.contains("initial_cursor") {
                assert!(
                    text.contains("initial_cursor = \"2024-04-30T22:00:00Z\""),
                    "{}: --since is midnight in the zone: {text}",
                    r.name
                );
            }
        }
    }

    #[test]
    fn since_is_a_date_or_a_time_in_the_acds_zone_or_an_instant() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        let at = |text: &str| since(text, Some(&berlin)).unwrap().to_string();
        assert_eq!(at("2024-05-01"), "2024-04-30T22:00:00Z");
        assert_eq!(at("2024-05-01T10:00:00"), "2024-05-01T08:00:00Z");
        assert_eq!(at("2024-05-01 10:00:00"), "2024-05-01T08:00:00Z");
        assert_eq!(at("2024-05-01T10:00:00Z"), "2024-05-01T10:00:00Z");
        assert!(since("yesterday", Some(&berlin)).is_err());
    }

    #[test]
    fn without_flags_what_the_site_supplies_is_a_todo() {
        let text = render(recipe("issabel-callcenter").unwrap(), &Site::default()).unwrap();
        assert!(text.contains("# TODO: the configuration id"));
        assert!(text.contains("# TODO: a file only the service user may read"));
        assert!(text.contains("# mysql://injixo:PASSWORD@issabel-host/call_center\n"));
        let avaya = render(recipe("avaya-cms").unwrap(), &Site::default()).unwrap();
        assert!(
            avaya.contains("# odbc:Driver={IBM INFORMIX ODBC DRIVER};"),
            "{avaya}"
        );
        assert!(text.contains("# TODO: the zone the ACD writes its local times in"));
        assert!(text.contains("start reading at"));
        assert!(recipe("avaya").is_err());
        assert!(recipe("avaya-cms").is_ok());
    }
}
