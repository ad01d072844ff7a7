//! `init --acd NAME`: each recipe's configuration, written by the real binary, run against the
//! vendor's own table layout in a real database (MariaDB here), with rows that follow the
//! vendor's lifecycle (inserted, then updated; rewritten; committed late; a call in the queue
//! over a weekend), and the exact records the fake API receives.
#![cfg(unix)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::databases::MariaDb;
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// The configuration `init --acd` writes for `acd` over the database at `url`, with `[api]`
/// and `[state]` those of the test installation; `check --offline` accepts it.
fn recipe(env: &Env, api: &FakeApi, acd: &str, url: &str, zone: &str) -> String {
    let url_file = env.dir.path().join("acd-db.url");
    std::fs::write(&url_file, url).unwrap();
    let flags = [
        "--integration-id",
        "1234",
        "--timezone",
        zone,
        "--connection-file",
        url_file.to_str().unwrap(),
        "--since",
        "2024-05-01",
    ];
    let sources = recipe_sources(env.dir.path(), acd, &flags, &[]);
    let text = env.config_text(&api.url(), "", &sources);
    env.write_config(&text);
    let (code, out) = env.check_offline();
    assert_eq!(code, 0, "check --offline accepts the recipe: {out}");
    text
}

/// A test installation running the daemon on the configuration `init --acd acd` writes for
/// the database at `url` (see [`recipe`]): the installation, the fake API, the daemon.
async fn run_recipe(acd: &str, url: &str, zone: &str) -> (Env, FakeApi, Daemon) {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let config = env.write_config(&recipe(&env, &api, acd, url, zone));
    let daemon = Daemon::start(config);
    (env, api, daemon)
}

async fn exec(pool: &sqlx::MySqlPool, sql: &str) {
    for statement in sql.split(";\n").filter(|s| !s.trim().is_empty()) {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Waits for two more polls of each of `pollers` (reading their look-back again), for every
/// lane to have delivered, and stops the daemon.
async fn quiesce(env: &Env, daemon: Daemon, pollers: &[&str]) {
    for p in pollers {
        more_polls(env, p, 2).await;
    }
    settled(env).await;
    daemon.stop().await;
}

/// A contact event as [`contacts`] lists it.
fn contact(queue: &str, name: &str, at: &str, handled: bool, duration: f64) -> Contact {
    (
        queue.to_owned(),
        name.to_owned(),
        at.to_owned(),
        handled,
        duration,
    )
}

type Contact = (String, String, String, bool, f64);

/// (queueIdentifier, queueName, timestamp, handled, duration) of each contact event.
fn contacts(api: &FakeApi) -> Vec<Contact> {
    let mut all: Vec<_> = api
        .records()
        .iter()
        .filter(|r| r.get("queueIdentifier").is_some())
        .map(|r: &Value| {
            (
                r["queueIdentifier"].as_str().unwrap().to_owned(),
                r["queueName"].as_str().unwrap().to_owned(),
                r["timestamp"].as_str().unwrap().to_owned(),
                r["properties"]["handled"].as_bool().unwrap(),
                r["properties"]["duration"].as_f64().unwrap(),
            )
        })
        .collect();
    all.sort_by(|a, b| a.2.cmp(&b.2));
    all
}

/// (agent, activity, start, end) of each agent status, by agent and start.
fn statuses(api: &FakeApi) -> Vec<(String, String, String, String)> {
    let mut all = intervals(api);
    all.sort();
    all
}

/// Expected statuses, sorted as [`statuses`] sorts them.
fn owned<const N: usize>(
    rows: [(&str, &str, &str, &str); N],
) -> Vec<(String, String, String, String)> {
    let mut all: Vec<_> = rows
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    all.sort();
    all
}

/// The tables VICIdial reads, as extras/MySQL_AST_CREATE_tables.sql creates them (2.14,
/// db_schema 1540); of vicidial_inbound_groups, whose other 200 columns are settings, the
/// first seven.
const VICIDIAL_TABLES: &str = "\
CREATE TABLE vicidial_closer_log (
closecallid INT(9) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
lead_id INT(9) UNSIGNED NOT NULL,
list_id BIGINT(14) UNSIGNED,
campaign_id VARCHAR(20),
call_date DATETIME,
start_epoch INT(10) UNSIGNED,
end_epoch INT(10) UNSIGNED,
length_in_sec INT(10),
status VARCHAR(6),
phone_code VARCHAR(10),
phone_number VARCHAR(18),
user VARCHAR(20),
comments VARCHAR(255),
processed ENUM('Y','N'),
queue_seconds DECIMAL(7,2) default '0',
user_group VARCHAR(20),
xfercallid INT(9) UNSIGNED,
term_reason  ENUM('CALLER','AGENT','QUEUETIMEOUT','ABANDON','AFTERHOURS','HOLDRECALLXFER','HOLDTIME','NOAGENT','NONE','MAXCALLS','ACFILTER','CLOSETIME') default 'NONE',
uniqueid VARCHAR(20) NOT NULL default '',
agent_only VARCHAR(20) default '',
queue_position SMALLINT(4) UNSIGNED default '1',
called_count SMALLINT(5) UNSIGNED default '0',
index (lead_id),
index (call_date),
index (campaign_id),
index (uniqueid)
) ENGINE=MyISAM;
CREATE TABLE vicidial_agent_log (
agent_log_id INT(9) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
user VARCHAR(20),
server_ip VARCHAR(15) NOT NULL,
event_time DATETIME,
lead_id INT(9) UNSIGNED,
campaign_id VARCHAR(8),
pause_epoch INT(10) UNSIGNED,
pause_sec SMALLINT(5) UNSIGNED default '0',
wait_epoch INT(10) UNSIGNED,
wait_sec SMALLINT(5) UNSIGNED default '0',
talk_epoch INT(10) UNSIGNED,
talk_sec SMALLINT(5) UNSIGNED default '0',
dispo_epoch INT(10) UNSIGNED,
dispo_sec SMALLINT(5) UNSIGNED default '0',
status VARCHAR(6),
user_group VARCHAR(20),
comments VARCHAR(20),
sub_status VARCHAR(6),
dead_epoch INT(10) UNSIGNED,
dead_sec SMALLINT(5) UNSIGNED default '0',
processed ENUM('Y','N') default 'N',
uniqueid VARCHAR(20) default '',
pause_type ENUM('UNDEFINED','SYSTEM','AGENT','API','ADMIN') default 'UNDEFINED',
index (lead_id),
index (user),
index (event_time)
) ENGINE=MyISAM;
CREATE TABLE vicidial_inbound_groups (
group_id VARCHAR(20) PRIMARY KEY NOT NULL,
group_name VARCHAR(30),
group_color VARCHAR(20),
active ENUM('Y','N'),
web_form_address TEXT,
voicemail_ext VARCHAR(10),
next_agent_call VARCHAR(40) default 'longest_wait_time'
) ENGINE=MyISAM";

/// 2024-05-01T07:00:00Z.
const T: i64 = 1_714_546_800;

fn at(offset: i64) -> String {
    jiff::Timestamp::from_second(T + offset)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vicidial_calls_and_agent_time_arrive_once_as_vicidial_counts_them() {
    let Some(db) = MariaDb::start() else {
        return;
    };
    let pool = sqlx::MySqlPool::connect(&db.url()).await.unwrap();
    exec(&pool, VICIDIAL_TABLES).await;
    exec(
        &pool,
        &format!(
            "INSERT INTO vicidial_inbound_groups (group_id, group_name, active) VALUES ('SUPPORT', 'Support Line', 'Y');
             INSERT INTO vicidial_closer_log (closecallid, lead_id, campaign_id, call_date, start_epoch, end_epoch, length_in_sec, status, user, queue_seconds, uniqueid) VALUES
               (1, 11, 'SUPPORT', '2024-05-01 09:00:00', {t0}, {t0} + 200, 200, 'SALE', 'anna', 20.50, '1714546800.1'),
               (2, 12, 'SUPPORT', '2024-05-01 09:01:00', {t0} + 60, {t0} + 105, 45, 'DROP', 'VDCL', 45.00, '1714546860.2'),
               (3, 13, 'SALES', '2024-05-01 09:02:00', {t0} + 120, {t0} + 121, 1, 'AFTHRS', 'VDCL', 0, '1714546920.3');
             INSERT INTO vicidial_closer_log (closecallid, lead_id, campaign_id, call_date, start_epoch, end_epoch, length_in_sec, status, user, queue_seconds, uniqueid) VALUES
               (4, 14, 'SUPPORT', '2024-05-01 09:03:00', {t0} + 180, NULL, NULL, 'QUEUE', 'VDCL', 0, '1714546980.4');
             INSERT INTO vicidial_agent_log (agent_log_id, user, server_ip, event_time, campaign_id, pause_epoch, pause_sec, wait_epoch, wait_sec, talk_epoch, talk_sec, dispo_epoch, dispo_sec, status, sub_status) VALUES
               (1, 'anna', '10.0.0.1', '2024-05-01 09:00:00', 'INB', {t0}, 30, {t0} + 30, 60, {t0} + 90, 120, {t0} + 210, 15, 'SALE', 'BREAK'),
               (2, 'anna', '10.0.0.1', '2024-05-01 09:03:45', 'INB', {t0} + 225, 0, {t0} + 225, 0, NULL, 0, NULL, 0, NULL, ''),
               (3, 'ben', '10.0.0.1', '2024-05-01 09:00:00', 'INB', {t0}, 65000, {t0} + 100, 50, NULL, 0, NULL, 0, NULL, 'LOGIN')",
            t0 = T
        ),
    )
    .await;

    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    // A session time zone in the URL changes nothing: only epochs are read, and turned into
    // UTC times by the query itself.
    let url = format!("{}?timezone=%2B05%3A00", db.url());
    let config = env.write_config(&recipe(&env, &api, "vicidial", &url, "America/New_York"));
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "3 calls and 5 intervals", || api.record_count() >= 8).await;

    // The call in the queue is answered and hangs up; a call that ended before the cursor is
    // committed late; the first call's row is rewritten by a disposition change; agent row 2
    // is updated as the agent takes a call and wraps up.
    exec(
        &pool,
        &format!(
            "UPDATE vicidial_closer_log SET status = 'A', user = 'ben', end_epoch = {t0} + 400, length_in_sec = 220, queue_seconds = 12.25 WHERE closecallid = 4;
             INSERT INTO vicidial_closer_log (closecallid, lead_id, campaign_id, call_date, start_epoch, end_epoch, length_in_sec, status, user, queue_seconds, uniqueid) VALUES
               (5, 15, 'SUPPORT', '2024-05-01 09:00:30', {t0} + 30, {t0} + 150, 120, 'SALE', 'ben', 5.00, '1714546830.5');
             UPDATE vicidial_closer_log SET status = 'CALLBK' WHERE closecallid = 1;
             UPDATE vicidial_agent_log SET wait_sec = 35, talk_epoch = {t0} + 260, talk_sec = 100, dispo_epoch = {t0} + 360, dispo_sec = 20 WHERE agent_log_id = 2",
            t0 = T
        ),
    )
    .await;
    wait_for(LIMIT, "5 calls and 8 intervals", || {
        api.record_count() >= 13
    })
    .await;
    // Two more polls read the overlap again: nothing twice.
    quiesce(&env, daemon, &["vicidial-calls", "vicidial-agents"]).await;

    let c = |q: &str, n: &str, t: i64, h: bool, d: f64| contact(q, n, &at(t), h, d);
    assert_eq!(
        contacts(&api),
        [
            c("SUPPORT", "Support Line", 0, true, 179.5),
            c("SUPPORT", "Support Line", 30, true, 115.0),
            c("SUPPORT", "Support Line", 60, false, 0.0),
            c("SALES", "SALES", 120, false, 0.0),
            c("SUPPORT", "Support Line", 180, true, 207.75),
        ]
    );
    assert_eq!(
        statuses(&api),
        owned([
            ("anna", "PAUSE:BREAK", &at(0), &at(30)),
            ("anna", "READY", &at(225), &at(260)),
            ("anna", "READY", &at(30), &at(90)),
            ("anna", "TALK", &at(260), &at(360)),
            ("anna", "TALK", &at(90), &at(210)),
            ("anna", "WRAPUP", &at(210), &at(225)),
            ("anna", "WRAPUP", &at(360), &at(380)),
            ("ben", "READY", &at(100), &at(150)),
        ])
    );
    assert_eq!(api.record_count(), 13, "nothing twice");
}

/// The tables the Issabel call center reads, as setup/call_center.sql creates them
/// (IssabelFoundation/callcenter@0a99181); call_entry's foreign keys to `contact` and
/// `campaign_entry`, tables the recipe does not read, are left out.
const ISSABEL_TABLES: &str = "\
CREATE TABLE `agent` (
  `id` int(10) unsigned NOT NULL auto_increment,
  `type` enum('Agent','SIP','IAX2') NOT NULL default 'Agent',
  `number` varchar(40) NOT NULL,
  `name` varchar(250) NOT NULL,
  `password` varchar(250) NOT NULL,
  `estatus` enum('A','I') default 'A',
  `eccp_password` varchar(128),
  PRIMARY KEY  (`id`),
  KEY `agent_type` (`estatus`,`type`,`number`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;
CREATE TABLE `break` (
  `id` int(10) unsigned NOT NULL auto_increment,
  `name` varchar(250) NOT NULL,
  `description` varchar(250) default NULL,
  `status` varchar(1) NOT NULL default 'A',
  `tipo` enum('B','H') default 'B',
  PRIMARY KEY  (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;
CREATE TABLE `audit` (
  `id` int(10) unsigned NOT NULL auto_increment,
  `id_agent` int(10) unsigned NOT NULL,
  `id_break` int(10) unsigned DEFAULT NULL,
  `datetime_init` datetime NOT NULL,
  `datetime_end` datetime default NULL,
  `duration` time default NULL,
  `ext_parked` varchar(10) default NULL,
  PRIMARY KEY  (`id`),
  KEY `id_agent` (`id_agent`),
  KEY `id_break` (`id_break`),
  CONSTRAINT `audit_ibfk_1` FOREIGN KEY (`id_agent`) REFERENCES `agent` (`id`),
  CONSTRAINT `audit_ibfk_2` FOREIGN KEY (`id_break`) REFERENCES `break` (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;
CREATE TABLE `queue_call_entry` (
  `id` int(10) unsigned NOT NULL auto_increment,
  `queue` varchar(50) default NULL,
  `date_init` date default NULL,
  `time_init` time default NULL,
  `date_end` date default NULL,
  `time_end` time default NULL,
  `estatus` varchar(1) NOT NULL default 'A',
  `script` text,
  PRIMARY KEY  (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;
CREATE TABLE `call_entry` (
  `id` int(10) unsigned NOT NULL auto_increment,
  `id_agent` int(10) unsigned default NULL,
  `id_queue_call_entry` int(10) unsigned NOT NULL,
  `id_contact` int(10) unsigned default NULL,
  `callerid` varchar(15) NOT NULL,
  `datetime_init` datetime default NULL,
  `datetime_end` datetime default NULL,
  `duration` int(10) unsigned default NULL,
  `status` varchar(32) default NULL,
  `transfer` varchar(6) default NULL,
  `datetime_entry_queue` datetime default NULL,
  `duration_wait` int(11) default NULL,
  `uniqueid` varchar(32) default NULL,
  `id_campaign` int(10) unsigned,
  `trunk` varchar(20) NOT NULL,
  PRIMARY KEY  (`id`),
  KEY `id_agent` (`id_agent`),
  KEY `id_queue_call_entry` (`id_queue_call_entry`),
  KEY `id_contact` (`id_contact`),
  CONSTRAINT `call_entry_ibfk_1` FOREIGN KEY (`id_agent`) REFERENCES `agent` (`id`),
  CONSTRAINT `call_entry_ibfk_2` FOREIGN KEY (`id_queue_call_entry`) REFERENCES `queue_call_entry` (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issabel_calls_and_sessions_with_breaks_arrive_once_in_utc() {
    let Some(db) = MariaDb::start() else {
        return;
    };
    let pool = sqlx::MySqlPool::connect(&db.url()).await.unwrap();
    exec(&pool, ISSABEL_TABLES).await;
    // Local times, Europe/Berlin (UTC+2 in May). Calls: answered; abandoned; one entering
    // the queue on Friday evening that is still there; one that never ends. Agents: Anna's
    // session with a lunch break, a hold of no length and a hold ending with the session;
    // a session of no length; Ben on a break from his session's first second; Cleo's two
    // sessions overlapping; Dan's break ending a second after his session, and a break
    // outside every session; Eve's session left open by a crash and closed by the dialer's
    // repair, with an estimated end in the past, once her next session had begun.
    exec(
        &pool,
        "INSERT INTO agent (id, number, name, password) VALUES (1, '1001', 'Anna', 'x'), (2, '1002', 'Ben', 'x'), (3, '1003', 'Cleo', 'x'), (4, '1004', 'Dan', 'x'), (5, '1005', 'Eve', 'x');
         INSERT INTO `break` (id, name, description, tipo) VALUES (1, 'Hold', 'Hold', 'H'), (2, 'Lunch', 'Lunch', 'B');
         INSERT INTO queue_call_entry (id, queue) VALUES (1, '600'), (2, '601');
         INSERT INTO call_entry (id, id_agent, id_queue_call_entry, callerid, datetime_entry_queue, datetime_init, datetime_end, duration, duration_wait, status, uniqueid, trunk) VALUES
           (1, 1, 1, '0401', '2024-05-01 09:00:00', '2024-05-01 09:00:20', '2024-05-01 09:05:20', 300, 20, 'terminada', '1714546800.1', 'SIP/t'),
           (2, NULL, 1, '0402', '2024-05-01 09:10:00', NULL, '2024-05-01 09:10:45', NULL, 45, 'abandonada', '1714547400.2', 'SIP/t'),
           (3, NULL, 2, '0403', '2024-05-03 17:55:00', NULL, NULL, NULL, NULL, 'en-cola', '1714751700.3', 'SIP/t'),
           (4, NULL, 2, '0404', '2024-05-03 17:56:00', NULL, NULL, NULL, NULL, 'en-cola', '1714751760.4', 'SIP/t');
         INSERT INTO audit (id, id_agent, id_break, datetime_init, datetime_end) VALUES
           (1, 1, NULL, '2024-05-01 08:00:00', '2024-05-01 17:00:00'),
           (2, 1, 2, '2024-05-01 12:00:00', '2024-05-01 12:30:00'),
           (3, 1, 1, '2024-05-01 16:45:00', '2024-05-01 17:00:00'),
           (4, 2, NULL, '2024-05-01 08:00:00', '2024-05-01 08:00:00'),
           (5, 2, NULL, '2024-05-01 09:00:00', NULL),
           (6, 2, 2, '2024-05-01 09:00:00', '2024-05-01 09:15:00'),
           (7, 1, 1, '2024-05-01 14:00:00', '2024-05-01 14:00:00'),
           (9, 3, NULL, '2024-05-01 09:00:00', '2024-05-01 11:00:00'),
           (10, 3, NULL, '2024-05-01 10:00:00', '2024-05-01 12:00:00'),
           (11, 4, NULL, '2024-05-01 09:00:00', '2024-05-01 10:00:00'),
           (12, 4, 2, '2024-05-01 09:50:00', '2024-05-01 10:00:01'),
           (13, 4, 1, '2024-05-01 14:00:00', '2024-05-01 14:10:00'),
           (14, 5, NULL, '2024-05-01 15:00:00', NULL),
           (15, 5, NULL, '2024-05-01 16:00:00', NULL)",
    )
    .await;

    let (env, api, daemon) = run_recipe("issabel-callcenter", &db.url(), "Europe/Berlin").await;
    wait_for(LIMIT, "2 calls and 8 intervals", || {
        api.record_count() >= 10
    })
    .await;

    // Ben logs out after the last change read, as the dialer writes it at that moment, and in
    // again at the same second; Monday morning the weekend call is abandoned.
    exec(
        &pool,
        "UPDATE audit SET datetime_end = '2024-05-01 17:30:00' WHERE id = 5;
         INSERT INTO audit (id, id_agent, id_break, datetime_init, datetime_end) VALUES (8, 2, NULL, '2024-05-01 17:30:00', '2024-05-01 18:00:00');
         UPDATE audit SET datetime_end = '2024-05-01 15:30:00' WHERE id = 14;
         UPDATE audit SET datetime_end = '2024-05-01 17:00:00' WHERE id = 15;
         UPDATE call_entry SET status = 'abandonada', datetime_end = '2024-05-06 08:01:00', duration_wait = 223260 WHERE id = 3",
    )
    .await;
    wait_for(LIMIT, "3 calls and 9 intervals", || {
        api.record_count() >= 12
    })
    .await;
    quiesce(&env, daemon, &["issabel-calls", "issabel-agents"]).await;

    let c = |q: &str, t: &str, h: bool, d: f64| contact(q, q, t, h, d);
    assert_eq!(
        contacts(&api),
        [
            c("600", "2024-05-01T07:00:00Z", true, 300.0),
            c("600", "2024-05-01T07:10:00Z", false, 0.0),
            c("601", "2024-05-03T15:55:00Z", false, 0.0),
        ]
    );
    assert_eq!(
        statuses(&api),
        owned([
            (
                "1001",
                "Hold",
                "2024-05-01T14:45:00Z",
                "2024-05-01T15:00:00Z"
            ),
            (
                "1001",
                "LoggedIn",
                "2024-05-01T06:00:00Z",
                "2024-05-01T10:00:00Z"
            ),
            (
                "1001",
                "LoggedIn",
                "2024-05-01T10:30:00Z",
                "2024-05-01T14:45:00Z"
            ),
            (
                "1001",
                "Lunch",
                "2024-05-01T10:00:00Z",
                "2024-05-01T10:30:00Z"
            ),
            (
                "1002",
                "LoggedIn",
                "2024-05-01T07:15:00Z",
                "2024-05-01T16:00:00Z"
            ),
            (
                "1002",
                "Lunch",
                "2024-05-01T07:00:00Z",
                "2024-05-01T07:15:00Z"
            ),
            (
                "1003",
                "LoggedIn",
                "2024-05-01T07:00:00Z",
                "2024-05-01T10:00:00Z"
            ),
            (
                "1004",
                "LoggedIn",
                "2024-05-01T07:00:00Z",
                "2024-05-01T07:50:00Z"
            ),
            (
                "1004",
                "Lunch",
                "2024-05-01T07:50:00Z",
                "2024-05-01T08:00:00Z"
            ),
            // The repaired end comes after her next login was read: it is late, and parked
            // saying so; her logged-in time is not cut short, nor her next session lost.
            (
                "1005",
                "LoggedIn",
                "2024-05-01T13:00:00Z",
                "2024-05-01T15:00:00Z"
            ),
        ])
    );
    assert_eq!(api.record_count(), 13, "nothing twice");
    let parked = all_parked(&env.state);
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(
        parked[0].reason.contains("was reported again"),
        "{}",
        parked[0].reason
    );
}

/// `asterisk-cdr`: Master.csv of the stock cdr_csv module (21 columns), one record per leg,
/// the legs of one call told apart by their sequence number, local times read in the zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_cdr_legs_arrive_once_each() {
    let env = Env::new();
    let api = FakeApi::start(KEY).await.unwrap();
    let sources = recipe_sources(
        env.dir.path(),
        "asterisk-cdr",
        &["--integration-id", "1234", "--timezone", "Europe/Berlin"],
        &[(
            "\"/var/log/asterisk/cdr-csv\"",
            &format!(
                "{:?}\nsettle = \"100ms\"\npoll_interval = \"200ms\"",
                env.exports.display().to_string()
            ),
        )],
    );
    env.write_config(&env.config_text(&api.url(), "", &sources));
    let (code, out) = env.check_offline();
    assert_eq!(code, 0, "{out}");
    // A queue call ringing agent 1001 (no answer), then answered by 1002; a busy call.
    std::fs::write(
        env.exports.join("Master.csv"),
        "\"\",\"0401\",\"600\",\"ext-queues\",\"\"\"Caller\"\" <0401>\",\"PJSIP/trunk-00000001\",\"PJSIP/1001-00000002\",\"Queue\",\"600,t\",\"2024-05-01 09:00:00\",\"\",\"2024-05-01 09:00:15\",15,0,\"NO ANSWER\",\"DOCUMENTATION\",\"1714546800.1\",\"\",\"\",\"1714546800.1\",1\n\
         \"\",\"0401\",\"600\",\"ext-queues\",\"\"\"Caller\"\" <0401>\",\"PJSIP/trunk-00000001\",\"PJSIP/1002-00000003\",\"Queue\",\"600,t\",\"2024-05-01 09:00:15\",\"2024-05-01 09:00:20\",\"2024-05-01 09:05:20\",305,300,\"ANSWERED\",\"DOCUMENTATION\",\"1714546800.1\",\"\",\"\",\"1714546800.1\",2\n\
         \"\",\"0402\",\"601\",\"ext-queues\",\"\"\"Other\"\" <0402>\",\"PJSIP/trunk-00000004\",\"\",\"Queue\",\"601,t\",\"2024-05-01 09:10:00\",\"\",\"2024-05-01 09:10:03\",3,0,\"BUSY\",\"DOCUMENTATION\",\"1714547400.4\",\"\",\"\",\"1714547400.4\",3\n",
    )
    .unwrap();
    let config = env.write_config(&env.config_text(&api.url(), "", &sources));
    let daemon = Daemon::start(config);
    wait_for(LIMIT, "3 legs", || api.record_count() >= 3).await;
    settled(&env).await;
    daemon.stop().await;
    let c = |q: &str, t: &str, h: bool, d: f64| contact(q, q, t, h, d);
    assert_eq!(
        contacts(&api),
        [
            c("600", "2024-05-01T07:00:00Z", false, 0.0),
            c("600", "2024-05-01T07:00:15Z", true, 300.0),
            c("601", "2024-05-01T07:10:00Z", false, 0.0),
        ]
    );
    assert_eq!(api.record_count(), 3);
}

/// callcent_queuecalls as a real 3CX database has it (the columns and types of a TypeORM
/// entity generated from one); callcent_ag_queuestatus with the columns of a 3CX backup's
/// table, its types inferred.
const THREECX_TABLES: &str = "\
CREATE TABLE callcent_queuecalls (
  idcallcent_queuecalls serial PRIMARY KEY,
  q_num character varying(255),
  time_start timestamp without time zone NOT NULL,
  time_end timestamp without time zone NOT NULL,
  ts_waiting interval DEFAULT '00:00:00',
  ts_polling interval DEFAULT '00:00:00',
  ts_servicing interval DEFAULT '00:00:00',
  ts_locating interval DEFAULT '00:00:00',
  count_polls integer NOT NULL,
  count_dialed integer NOT NULL,
  count_rejected integer NOT NULL,
  count_dials_timed integer NOT NULL,
  reason_noanswercode integer NOT NULL,
  reason_failcode integer NOT NULL,
  reason_noanswerdesc character varying(255) DEFAULT '',
  reason_faildesc character varying(255) DEFAULT '',
  call_history_id character varying(255),
  q_cal character varying(255) DEFAULT '',
  from_userpart character varying(255) DEFAULT '',
  from_displayname character varying(255) DEFAULT '',
  to_dialednum character varying(255) DEFAULT '',
  to_dn character varying(255) DEFAULT '',
  to_dntype integer NOT NULL,
  cb_num character varying(255) DEFAULT '',
  call_result text DEFAULT '',
  deal_status integer NOT NULL DEFAULT 0,
  is_visible boolean NOT NULL DEFAULT true,
  is_agent boolean NOT NULL DEFAULT true
);
CREATE TABLE callcent_ag_queuestatus (
  idcallcent_ag_queuestatus serial PRIMARY KEY,
  q_num character varying(255),
  ag_num character varying(255),
  timeofupdate timestamp without time zone NOT NULL,
  is_loggedin_in_queue boolean NOT NULL,
  is_loggedin_in_allqueues boolean NOT NULL
)";

async fn exec_pg(pool: &sqlx::PgPool, sql: &str) {
    for statement in sql.split(";\n").filter(|s| !s.trim().is_empty()) {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threecx_queue_calls_and_logins_arrive_once() {
    let Some(db) = support::databases::Postgres::start() else {
        return;
    };
    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    exec_pg(&pool, THREECX_TABLES).await;
    let call = |q: &str, start: &str, end: &str, served: &str| {
        format!(
            "INSERT INTO callcent_queuecalls (q_num, time_start, time_end, ts_waiting, ts_servicing, \
             count_polls, count_dialed, count_rejected, count_dials_timed, reason_noanswercode, \
             reason_failcode, call_history_id, to_dntype) VALUES ('{q}', '{start}', '{end}', \
             interval '00:00:20', interval '{served}', 1, 1, 0, 0, 0, 0, 'h-{start}', 0)"
        )
    };
    exec_pg(
        &pool,
        &[
            call("800", "2024-05-01 07:00:00", "2024-05-01 07:02:50", "00:02:30.5"),
            call("800", "2024-05-01 07:10:00", "2024-05-01 07:10:40", "00:00:00"),
            "INSERT INTO callcent_ag_queuestatus (q_num, ag_num, timeofupdate, is_loggedin_in_queue, is_loggedin_in_allqueues) VALUES \
             ('800', '100', '2024-05-01 06:00:00', true, true), ('801', '100', '2024-05-01 06:00:00', true, true), \
             ('800', '101', '2024-05-01 06:30:00', true, true)"
                .to_owned(),
        ]
        .join(";\n"),
    )
    .await;

    let (env, api, daemon) = run_recipe("3cx", &db.url(), "Europe/Berlin").await;
    wait_for(LIMIT, "2 calls", || api.record_count() >= 2).await;
    // A call ending before the last one read, committed late; agent 100 logs out of one queue,
    // then of all; 101 logs out.
    exec_pg(
        &pool,
        &[
            call("801", "2024-05-01 07:05:00", "2024-05-01 07:06:00", "00:00:45"),
            "INSERT INTO callcent_ag_queuestatus (q_num, ag_num, timeofupdate, is_loggedin_in_queue, is_loggedin_in_allqueues) VALUES \
             ('801', '100', '2024-05-01 10:00:00', false, true), ('800', '100', '2024-05-01 12:00:00', false, false), \
             ('800', '101', '2024-05-01 12:30:00', false, false)"
                .to_owned(),
        ]
        .join(";\n"),
    )
    .await;
    wait_for(LIMIT, "3 calls and 2 intervals", || api.record_count() >= 5).await;
    quiesce(&env, daemon, &["3cx-queue-calls", "3cx-agents"]).await;

    let c = |q: &str, t: &str, h: bool, d: f64| contact(q, q, t, h, d);
    assert_eq!(
        contacts(&api),
        [
            c("800", "2024-05-01T07:00:00Z", true, 150.5),
            c("801", "2024-05-01T07:05:00Z", true, 45.0),
            c("800", "2024-05-01T07:10:00Z", false, 0.0),
        ]
    );
    assert_eq!(
        statuses(&api),
        owned([
            (
                "100",
                "LoggedIn",
                "2024-05-01T06:00:00Z",
                "2024-05-01T12:00:00Z"
            ),
            (
                "101",
                "LoggedIn",
                "2024-05-01T06:30:00Z",
                "2024-05-01T12:30:00Z"
            ),
        ])
    );
    assert_eq!(api.record_count(), 5, "nothing twice");
}

/// Genesys Info Mart's tables as its PostgreSQL Physical Data Model lays them out: the columns
/// the recipe reads, with Genesys's types (Unix seconds as integers, keys as integers, the
/// IDs as numeric(19)), and some of the others around them.
const GENESYS_TABLES: &str = "\
CREATE TABLE media_type (media_type_key integer PRIMARY KEY, media_name varchar(64), \
  media_name_code varchar(32), is_online numeric(1));
CREATE TABLE resource_ (resource_key integer PRIMARY KEY, tenant_key integer NOT NULL, \
  resource_type varchar(255), resource_type_code varchar(32), resource_subtype varchar(255), \
  resource_name varchar(255), employee_id varchar(255), agent_first_name varchar(64), \
  agent_last_name varchar(64));
CREATE TABLE technical_descriptor (technical_descriptor_key integer PRIMARY KEY, \
  resource_role varchar(64), role_reason varchar(64), technical_result varchar(64), \
  result_reason varchar(64));
CREATE TABLE interaction_resource_fact (interaction_resource_id numeric(19) PRIMARY KEY, \
  start_date_time_key integer NOT NULL, resource_key integer NOT NULL, \
  technical_descriptor_key integer, start_ts integer, end_ts integer, \
  ring_duration integer, talk_duration integer, hold_duration integer, \
  after_call_work_duration integer);
CREATE TABLE mediation_segment_fact (mediation_segment_id numeric(19) PRIMARY KEY, \
  start_date_time_key integer NOT NULL, end_date_time_key integer, tenant_key integer NOT NULL, \
  media_type_key integer NOT NULL, resource_key integer NOT NULL, \
  technical_descriptor_key integer NOT NULL, interaction_id numeric(19), \
  target_ixn_resource_id numeric(19), start_ts integer, end_ts integer, \
  mediation_duration integer, create_audit_key numeric(19) NOT NULL);
CREATE TABLE resource_state (resource_state_key integer PRIMARY KEY, state_type varchar(32), \
  state_name varchar(64), state_type_code varchar(32), state_name_code varchar(32));
CREATE TABLE sm_media_neutral_state_fact (start_date_time_key integer NOT NULL, \
  end_date_time_key integer, resource_key integer NOT NULL, resource_state_key integer NOT NULL, \
  resource_group_combination_key integer, tenant_key integer NOT NULL, start_ts integer NOT NULL, \
  end_ts integer, stuck_flag numeric(1) DEFAULT 0, create_audit_key numeric(19) NOT NULL DEFAULT -1);
INSERT INTO media_type VALUES (1, 'Voice', 'VOICE', 1), (2, 'Chat', 'CHAT', 1);
INSERT INTO resource_ VALUES \
  (10, 1, 'Queue', 'QUEUE', 'VirtualQueue', 'VQ_Support', NULL, NULL, NULL), \
  (11, 1, 'Queue', 'QUEUE', 'VirtualQueue', 'VQ_Chat', NULL, NULL, NULL), \
  (20, 1, 'Agent', 'AGENT', 'Agent', 'jdoe', 'E100', 'Jane', 'Doe'), \
  (21, 1, 'Agent', 'AGENT', 'Agent', 'asmith', '', 'Al', 'Smith');
INSERT INTO technical_descriptor VALUES (1, 'ROUTEDTO', 'UNKNOWN', 'Diverted', 'AnsweredByAgent'), \
  (2, 'ROUTEDTO', 'UNKNOWN', 'Abandoned', 'AbandonedWhileQueued'), \
  (3, 'ROUTEDTO', 'UNKNOWN', 'Cleared', 'Unspecified');
INSERT INTO resource_state VALUES (1, 'Ready', 'Ready', 'READY', 'READY'), \
  (2, 'NotReady', 'NotReady', 'NOTREADY', 'NOTREADY'), (3, 'Busy', 'Busy', 'BUSY', 'BUSY')";

/// Unix seconds of 2024-05-01 at `hh:mm` UTC.
fn ts(hh_mm: &str) -> i64 {
    let (h, m) = hh_mm.split_once(':').unwrap();
    1_714_521_600 + h.parse::<i64>().unwrap() * 3600 + m.parse::<i64>().unwrap() * 60
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genesys_queue_segments_and_agent_states_arrive_once() {
    let Some(db) = support::databases::Postgres::start() else {
        return;
    };
    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    exec_pg(&pool, GENESYS_TABLES).await;
    // (id, queue, media, result, irf, entered, left); irf: (id, talk, hold, acw).
    let segment = |id: i64,
                   queue: i64,
                   media: i64,
                   result: i64,
                   target: Option<i64>,
                   from: &str,
                   to: &str| {
        format!(
            "INSERT INTO mediation_segment_fact (mediation_segment_id, start_date_time_key, \
             tenant_key, media_type_key, resource_key, technical_descriptor_key, interaction_id, \
             target_ixn_resource_id, start_ts, end_ts, mediation_duration, create_audit_key) \
             VALUES ({id}, 1, 1, {media}, {queue}, {result}, {id}, {}, {}, {}, {}, 1)",
            target.map_or("NULL".to_owned(), |t| t.to_string()),
            ts(from),
            ts(to),
            ts(to) - ts(from)
        )
    };
    let irf = |id: i64, talk: i64, hold: i64, acw: i64| {
        format!(
            "INSERT INTO interaction_resource_fact VALUES ({id}, 1, 20, 1, 0, 0, 5, {talk}, {hold}, {acw})"
        )
    };
    let state = |agent: i64, state: i64, from: &str, to: Option<&str>| {
        format!(
            "INSERT INTO sm_media_neutral_state_fact (start_date_time_key, resource_key, \
             resource_state_key, tenant_key, start_ts, end_ts) VALUES (1, {agent}, {state}, 1, {}, {})",
            ts(from),
            to.map_or("NULL".to_owned(), |t| ts(t).to_string())
        )
    };
    exec_pg(
        &pool,
        &[
            irf(500, 120, 10, 30),
            irf(501, 0, 0, 0),
            // Answered: talk, hold and after-call work 160 s.
            segment(1, 10, 1, 1, Some(500), "07:00", "07:01"),
            // Abandoned in the queue.
            segment(2, 10, 1, 2, None, "07:05", "07:06"),
            // A chat distributed, not taken (no talk).
            segment(3, 11, 2, 1, Some(501), "07:10", "07:11"),
            // jdoe: Ready, NotReady cut by an ETL cycle at 08:15, Ready, logged out, Ready.
            state(20, 1, "08:00", Some("08:10")),
            state(20, 2, "08:10", Some("08:15")),
            state(20, 2, "08:15", Some("08:20")),
            state(20, 1, "08:20", Some("08:30")),
            state(20, 1, "09:00", Some("09:10")),
            // asmith (no employee id): Busy, then Ready still going on.
            state(21, 3, "08:00", Some("08:05")),
            state(21, 1, "08:05", None),
        ]
        .join(";\n"),
    )
    .await;

    let (env, api, daemon) = run_recipe("genesys-infomart", &db.url(), "Europe/Berlin").await;
    wait_for(LIMIT, "3 contacts and 4 intervals", || {
        api.record_count() >= 8
    })
    .await;
    // A segment an ETL cycle commits late, older than the last one read.
    exec_pg(&pool, &segment(4, 10, 1, 3, None, "07:07", "07:08")).await;
    wait_for(LIMIT, "the late segment", || api.record_count() >= 9).await;
    quiesce(&env, daemon, &["genesys-queues", "genesys-agents"]).await;

    assert_eq!(
        contacts(&api),
        [
            contact(
                "VQ_Support",
                "VQ_Support",
                "2024-05-01T07:00:00Z",
                true,
                160.0
            ),
            contact(
                "VQ_Support",
                "VQ_Support",
                "2024-05-01T07:05:00Z",
                false,
                0.0
            ),
            contact(
                "VQ_Support",
                "VQ_Support",
                "2024-05-01T07:07:00Z",
                false,
                0.0
            ),
            contact("VQ_Chat", "VQ_Chat", "2024-05-01T07:10:00Z", false, 0.0),
        ]
    );
    let chats = api
        .records()
        .iter()
        .filter(|r| r["channel"] == "chats")
        .count();
    assert_eq!(chats, 1);
    assert_eq!(
        statuses(&api),
        owned([
            (
                "E100",
                "Ready",
                "2024-05-01T08:00:00Z",
                "2024-05-01T08:10:00Z"
            ),
            (
                "E100",
                "NotReady",
                "2024-05-01T08:10:00Z",
                "2024-05-01T08:20:00Z"
            ),
            (
                "E100",
                "Ready",
                "2024-05-01T08:20:00Z",
                "2024-05-01T08:30:00Z"
            ),
            (
                "E100",
                "Ready",
                "2024-05-01T09:00:00Z",
                "2024-05-01T09:10:00Z"
            ),
            (
                "asmith",
                "Busy",
                "2024-05-01T08:00:00Z",
                "2024-05-01T08:05:00Z"
            ),
        ])
    );
    assert_eq!(api.record_count(), 9, "nothing twice");
}

/// 3CX V20 Update 6's call records: one row per segment of a call, with the columns
/// third-party reports on V20 read.
const THREECX_V20_TABLES: &str = "\
CREATE TABLE cdroutput (cdr_id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \
  call_history_id uuid NOT NULL, originating_cdr_id uuid, \
  source_dn_type varchar(64), source_dn_number varchar(64), source_dn_name varchar(255), \
  destination_dn_type varchar(64), destination_dn_number varchar(64), \
  destination_dn_name varchar(255), destination_entity_type varchar(64), \
  creation_method varchar(64), creation_forward_reason varchar(64), \
  termination_reason varchar(64), termination_reason_details varchar(255), \
  cdr_started_at timestamp with time zone NOT NULL, \
  cdr_answered_at timestamp with time zone, cdr_ended_at timestamp with time zone)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threecx_v20_queue_passages_arrive_once_as_answered_by_an_extension() {
    let Some(db) = support::databases::Postgres::start() else {
        return;
    };
    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    exec_pg(&pool, THREECX_V20_TABLES).await;
    // A segment: (its id, call, originating segment, destination type, number, name, entity,
    // started, answered, ended), times on 2024-05-01 UTC.
    #[allow(clippy::too_many_arguments)]
    fn seg(
        id: u32,
        call: u32,
        from: Option<u32>,
        kind: &str,
        number: &str,
        name: &str,
        entity: &str,
        times: (&str, Option<&str>, &str),
    ) -> String {
        let uuid = |n: u32| format!("'00000000-0000-0000-0000-{n:012}'");
        let at = |t: &str| format!("'2024-05-01 {t}+00'");
        format!(
            "INSERT INTO cdroutput (cdr_id, call_history_id, originating_cdr_id, source_dn_type, \
             destination_dn_type, destination_dn_number, destination_dn_name, \
             destination_entity_type, cdr_started_at, cdr_answered_at, cdr_ended_at) VALUES \
             ({}, {}, {}, 'provider', '{kind}', '{number}', '{name}', '{entity}', {}, {}, {})",
            uuid(id),
            uuid(1000 + call),
            from.map_or("NULL".into(), uuid),
            at(times.0),
            times.1.map_or("NULL".into(), at),
            at(times.2)
        )
    }
    let q = |id, call, start: &str, end: &str| {
        seg(
            id,
            call,
            None,
            "queue",
            "800",
            "Support",
            "queue",
            (start, None, end),
        )
    };
    exec_pg(
        &pool,
        &[
            // Call 1: queue 800 rings 100 (no answer), then 101 answers for 120 s.
            q(1, 1, "07:00:00", "07:00:30"),
            seg(
                2,
                1,
                Some(1),
                "extension",
                "100",
                "Ann",
                "",
                ("07:00:05", None, "07:00:15"),
            ),
            seg(
                3,
                1,
                Some(1),
                "extension",
                "101",
                "Ben",
                "",
                ("07:00:15", Some("07:00:30"), "07:02:30"),
            ),
            // Call 2: abandoned in the queue.
            q(4, 2, "07:05:00", "07:06:00"),
            // Call 3: overflows from 800 to 801, answered there for 60 s.
            q(5, 3, "07:10:00", "07:11:00"),
            seg(
                6,
                3,
                Some(5),
                "queue",
                "801",
                "Sales",
                "queue",
                ("07:11:00", None, "07:11:20"),
            ),
            seg(
                7,
                3,
                Some(6),
                "extension",
                "102",
                "Cid",
                "",
                ("07:11:05", Some("07:11:20"), "07:12:20"),
            ),
            // Call 4: the queue sends it to a voicemail, which answers.
            q(8, 4, "07:15:00", "07:15:40"),
            seg(
                9,
                4,
                Some(8),
                "extension",
                "100",
                "Ann",
                "voicemail",
                ("07:15:40", Some("07:15:41"), "07:16:00"),
            ),
            // Call 5: through 800 twice, answered on the second passage for 30 s.
            q(10, 5, "07:20:00", "07:21:00"),
            q(11, 5, "07:22:00", "07:22:30"),
            seg(
                12,
                5,
                Some(11),
                "extension",
                "101",
                "Ben",
                "",
                ("07:22:10", Some("07:22:30"), "07:23:00"),
            ),
        ]
        .join(";\n"),
    )
    .await;

    let (env, api, daemon) = run_recipe("3cx-v20u6", &db.url(), "Europe/Berlin").await;
    wait_for(LIMIT, "6 contacts", || api.record_count() >= 6).await;
    // A call whose records are committed late, ended before the last one read.
    exec_pg(&pool, &q(13, 6, "07:03:00", "07:04:00")).await;
    wait_for(LIMIT, "the late call", || api.record_count() >= 7).await;
    quiesce(&env, daemon, &["3cx-queue-calls"]).await;

    let c = |q: &str, name: &str, t: &str, h: bool, d: f64| contact(q, name, t, h, d);
    assert_eq!(
        contacts(&api),
        [
            c("800", "Support", "2024-05-01T07:00:00Z", true, 120.0),
            c("800", "Support", "2024-05-01T07:03:00Z", false, 0.0),
            c("800", "Support", "2024-05-01T07:05:00Z", false, 0.0),
            c("800", "Support", "2024-05-01T07:10:00Z", false, 0.0),
            c("801", "Sales", "2024-05-01T07:11:00Z", true, 60.0),
            c("800", "Support", "2024-05-01T07:15:00Z", false, 0.0),
            c("800", "Support", "2024-05-01T07:20:00Z", true, 30.0),
        ]
    );
    assert_eq!(api.record_count(), 7, "nothing twice");
}

/// Cisco UCCE's HDS tables as its Database Schema Handbook lays them out (the columns the
/// recipe reads and some beside them), created in PostgreSQL and read through ODBC as the
/// recipe reads SQL Server: unquoted names, which both engines match without regard to case.
#[cfg(feature = "odbc")]
const UCCE_TABLES: &str = "\
CREATE TABLE Skill_Group (SkillTargetID integer PRIMARY KEY, PeripheralID smallint, \
  EnterpriseName varchar(32) NOT NULL, PeripheralNumber integer);
CREATE TABLE Termination_Call_Detail (RecoveryKey double precision PRIMARY KEY, \
  DateTime timestamp NOT NULL, DbDateTime timestamp, PeripheralCallType smallint, \
  CallDisposition smallint, CallDispositionFlag integer, SkillGroupSkillTargetID integer, \
  AgentSkillTargetID integer, CallTypeID integer, LocalQTime integer, RingTime integer, \
  DelayTime integer, TalkTime integer, HoldTime integer, WorkTime integer, Duration integer);
CREATE TABLE Agent_State_Trace (RecoveryKey double precision PRIMARY KEY, \
  DateTime timestamp NOT NULL, DbDateTime timestamp, SkillTargetID integer NOT NULL, \
  MRDomainID integer NOT NULL, AgentState smallint, ReasonCode integer, \
  SkillGroupSkillTargetID integer, TimeZone integer, EventName integer);
INSERT INTO Skill_Group VALUES (5001, 1, 'Support_SG', 1), (5002, 1, 'Sales_SG', 2)";

#[cfg(feature = "odbc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cisco_ucce_legs_and_agent_states_arrive_once_through_odbc() {
    let Some(db) = support::databases::Postgres::start() else {
        return;
    };
    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    exec_pg(&pool, UCCE_TABLES).await;
    // A leg: (RecoveryKey, type, disposition, skill group, talk, hold, work, duration, DateTime,
    // DbDateTime), local times of 2024-05-01 (Europe/Berlin, UTC+2).
    #[allow(clippy::too_many_arguments)]
    fn leg(
        key: u32,
        kind: u32,
        disposition: u32,
        group: u32,
        (talk, hold, work, duration): (u32, u32, u32, u32),
        ended: &str,
        written: &str,
    ) -> String {
        format!(
            "INSERT INTO Termination_Call_Detail (RecoveryKey, DateTime, DbDateTime, \
             PeripheralCallType, CallDisposition, CallDispositionFlag, SkillGroupSkillTargetID, \
             TalkTime, HoldTime, WorkTime, Duration) VALUES ({key}.0, '2024-05-01 {ended}', \
             '2024-05-01 {written}', {kind}, {disposition}, 0, {group}, {talk}, {hold}, {work}, \
             {duration})"
        )
    }
    let state = |key: u32, domain: u32, state: u32, reason: u32, at: &str| {
        format!(
            "INSERT INTO Agent_State_Trace (RecoveryKey, DateTime, DbDateTime, SkillTargetID, \
             MRDomainID, AgentState, ReasonCode) VALUES ({key}.0, '2024-05-01 {at}', \
             '2024-05-01 {at}', 7001, {domain}, {state}, {reason})"
        )
    };
    exec_pg(
        &pool,
        &[
            // Handled: 120 s talk, 10 s hold, 20 s work, offered 180 s before it ended.
            leg(100, 2, 13, 5001, (120, 10, 20, 180), "09:03:00", "09:03:05"),
            // Abandoned while ringing.
            leg(101, 2, 3, 5001, (0, 0, 0, 40), "09:10:40", "09:10:45"),
            // A transfer in: not an offered call of the skill group.
            leg(102, 4, 13, 5001, (30, 0, 0, 30), "09:15:00", "09:15:02"),
            // Handled in the other skill group (ACD In).
            leg(103, 1, 13, 5002, (60, 0, 0, 75), "09:21:15", "09:21:20"),
            state(1, 1, 2, 0, "08:00:00"),
            state(2, 1, 3, 0, "08:05:00"),
            state(3, 1, 4, 0, "08:20:00"),
            state(4, 1, 6, 0, "08:25:00"),
            state(5, 1, 3, 0, "08:27:00"),
            state(6, 1, 2, 12, "08:40:00"),
            state(7, 1, 0, 0, "08:50:00"),
            // The same agent in the chat domain: not read.
            state(8, 2, 3, 0, "08:01:00"),
        ]
        .join(";\n"),
    )
    .await;
    let odbc = db.odbc_url();
    let (env, api, daemon) = run_recipe("cisco-ucce", &odbc, "Europe/Berlin").await;
    wait_for(LIMIT, "3 calls and 6 intervals", || api.record_count() >= 9).await;
    // A leg that reached the HDS late, ended before the last one read.
    exec_pg(
        &pool,
        &leg(104, 2, 13, 5001, (25, 0, 0, 30), "09:05:30", "09:30:00"),
    )
    .await;
    wait_for(LIMIT, "the late leg", || api.record_count() >= 10).await;
    quiesce(&env, daemon, &["ucce-calls", "ucce-agents"]).await;

    assert_eq!(
        contacts(&api),
        [
            contact("5001", "Support_SG", "2024-05-01T07:00:00Z", true, 150.0),
            contact("5001", "Support_SG", "2024-05-01T07:05:00Z", true, 25.0),
            contact("5001", "Support_SG", "2024-05-01T07:10:00Z", false, 0.0),
            contact("5002", "Sales_SG", "2024-05-01T07:20:00Z", true, 60.0),
        ]
    );
    assert_eq!(
        statuses(&api),
        owned([
            (
                "7001",
                "NotReady",
                "2024-05-01T06:00:00Z",
                "2024-05-01T06:05:00Z"
            ),
            (
                "7001",
                "Ready",
                "2024-05-01T06:05:00Z",
                "2024-05-01T06:20:00Z"
            ),
            (
                "7001",
                "Talking",
                "2024-05-01T06:20:00Z",
                "2024-05-01T06:25:00Z"
            ),
            (
                "7001",
                "WorkReady",
                "2024-05-01T06:25:00Z",
                "2024-05-01T06:27:00Z"
            ),
            (
                "7001",
                "Ready",
                "2024-05-01T06:27:00Z",
                "2024-05-01T06:40:00Z"
            ),
            (
                "7001",
                "NotReady:12",
                "2024-05-01T06:40:00Z",
                "2024-05-01T06:50:00Z"
            ),
        ])
    );
    assert_eq!(api.record_count(), 10, "nothing twice");
}

/// Avaya CMS's tables as its ODBC database items lay them out (the columns the recipe reads
/// and some beside them; Informix `date`, `smallint`, `integer`, `char`), created in
/// PostgreSQL and read through ODBC as the recipe reads Informix.
#[cfg(feature = "odbc")]
const CMS_TABLES: &str = "\
CREATE TABLE hsplit (ACD smallint NOT NULL, SPLIT smallint NOT NULL, ROW_DATE date NOT NULL, \
  STARTTIME smallint NOT NULL, INTRVL smallint NOT NULL, CALLSOFFERED integer, ACDCALLS integer, \
  ABNCALLS integer, ACDTIME integer, ACWTIME integer, ANSTIME integer, OTHERCALLS integer, \
  OUTFLOWCALLS integer, ACCEPTABLE integer);
CREATE TABLE haglog (ACD smallint NOT NULL, SPLIT smallint NOT NULL, ROW_DATE date NOT NULL, \
  LOGID char(10) NOT NULL, EXTN char(6), LOGIN integer, LOGOUT integer, LOGOUT_DATE date, \
  LOGOUT_REASON smallint, INFLAG char(1), OUTFLAG char(1), LOC_ID integer);
CREATE TABLE synonyms (ACD_NO smallint, ITEM_TYPE char(20), ITEM_NAME char(100), \
  VALUE char(40), STANDARD smallint, DESCR char(150));
INSERT INTO synonyms (ACD_NO, ITEM_TYPE, ITEM_NAME, VALUE) VALUES \
  (1, 'split', 'Support', '1'), (1, 'split', 'Sales', '2'), (1, 'agname', 'Ann', '4001')";

#[cfg(feature = "odbc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avaya_cms_intervals_and_logins_arrive_once_through_odbc() {
    let Some(db) = support::databases::Postgres::start() else {
        return;
    };
    let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
    exec_pg(&pool, CMS_TABLES).await;
    // An interval row: (split, day, hhmm, minutes, offered, answered, talk, after-call work).
    #[allow(clippy::too_many_arguments)]
    fn interval(
        split: u32,
        day: &str,
        start: u32,
        minutes: u32,
        offered: u32,
        answered: u32,
        talk: u32,
        acw: u32,
    ) -> String {
        format!(
            "INSERT INTO hsplit (ACD, SPLIT, ROW_DATE, STARTTIME, INTRVL, CALLSOFFERED, \
             ACDCALLS, ABNCALLS, ACDTIME, ACWTIME) VALUES (1, {split}, '{day}', {start}, \
             {minutes}, {offered}, {answered}, {}, {talk}, {acw})",
            offered - answered
        )
    }
    // A login row: (split, login id, login and logout as Berlin wall-clock on 2024-05-01/02).
    let login = |split: u32, id: &str, from: &str, to: Option<&str>| {
        let unix = |t: &str| {
            let wall = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", t).unwrap();
            jiff::tz::TimeZone::get("Europe/Berlin")
                .unwrap()
                .to_ambiguous_timestamp(wall)
                .compatible()
                .unwrap()
                .as_second()
        };
        let (logout, day) = match to {
            Some(t) => (unix(t).to_string(), format!("'{}'", &t[..10])),
            None => ("0".to_owned(), "NULL".to_owned()),
        };
        format!(
            "INSERT INTO haglog (ACD, SPLIT, ROW_DATE, LOGID, LOGIN, LOGOUT, LOGOUT_DATE, \
             LOGOUT_REASON) VALUES (1, {split}, '{}', '{id}', {}, {logout}, {day}, 0)",
            &from[..10],
            unix(from)
        )
    };
    exec_pg(
        &pool,
        &[
            // 09:00-09:30: three offered, two answered with 200 s talk and 40 s wrap-up.
            interval(1, "2024-05-01", 900, 30, 3, 2, 200, 40),
            // 09:30-10:00 in the other split, one answered.
            interval(2, "2024-05-01", 930, 30, 1, 1, 90, 0),
            // A split without a dictionary name, in quarter hours; an interval without calls.
            interval(3, "2024-05-01", 915, 15, 1, 0, 0, 0),
            interval(1, "2024-05-01", 930, 30, 0, 0, 0, 0),
            // After the site went to hourly intervals: two unanswered in 10:00-11:00.
            interval(1, "2024-05-01", 1000, 60, 2, 0, 0, 0),
            // The next day's first interval, 00:00-00:30.
            interval(2, "2024-05-02", 0, 30, 1, 1, 60, 0),
            // A session, written once per split it was logged into.
            login(1, "4001", "2024-05-01 08:00", Some("2024-05-01 12:00")),
            login(2, "4001", "2024-05-01 08:00", Some("2024-05-01 12:00")),
            // A session over midnight.
            login(1, "4002", "2024-05-01 22:00", Some("2024-05-02 02:00")),
            // A session still open.
            login(1, "4003", "2024-05-02 06:00", None),
        ]
        .join(";\n"),
    )
    .await;
    let odbc = db.odbc_url();
    let (env, api, daemon) = run_recipe("avaya-cms", &odbc, "Europe/Berlin").await;
    wait_for(LIMIT, "8 calls and 2 sessions", || api.record_count() >= 10).await;
    // An interval of the day before the cursor's, archived late, and the open session ended.
    exec_pg(
        &pool,
        &[
            interval(2, "2024-05-01", 1000, 60, 1, 1, 30, 0),
            "UPDATE haglog SET LOGOUT = LOGIN + 5400, LOGOUT_DATE = '2024-05-02' \
             WHERE LOGID = '4003'"
                .to_owned(),
        ]
        .join(";\n"),
    )
    .await;
    wait_for(LIMIT, "the late interval and the ended session", || {
        api.record_count() >= 12
    })
    .await;
    quiesce(&env, daemon, &["cms-splits", "cms-logins"]).await;

    assert_eq!(
        contacts(&api),
        [
            contact("1", "Support", "2024-05-01T07:05:00Z", true, 120.0),
            contact("1", "Support", "2024-05-01T07:15:00Z", true, 120.0),
            contact("3", "Split 3", "2024-05-01T07:22:30Z", false, 0.0),
            contact("1", "Support", "2024-05-01T07:25:00Z", false, 0.0),
            contact("2", "Sales", "2024-05-01T07:45:00Z", true, 90.0),
            contact("1", "Support", "2024-05-01T08:15:00Z", false, 0.0),
            contact("2", "Sales", "2024-05-01T08:30:00Z", true, 30.0),
            contact("1", "Support", "2024-05-01T08:45:00Z", false, 0.0),
            contact("2", "Sales", "2024-05-01T22:15:00Z", true, 60.0),
        ]
    );
    assert_eq!(
        statuses(&api),
        owned([
            (
                "4001",
                "LoggedIn",
                "2024-05-01T06:00:00Z",
                "2024-05-01T10:00:00Z"
            ),
            (
                "4002",
                "LoggedIn",
                "2024-05-01T20:00:00Z",
                "2024-05-02T00:00:00Z"
            ),
            (
                "4003",
                "LoggedIn",
                "2024-05-02T04:00:00Z",
                "2024-05-02T05:30:00Z"
            ),
        ])
    );
    assert_eq!(api.record_count(), 12, "nothing twice");
}
