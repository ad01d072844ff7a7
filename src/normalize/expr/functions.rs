//! The helpers a map's expressions may call (`seconds`, `span`, `local`, `endAfter`), bound
//! to a source's [`Reading`], on top of CEL's standard library and its string extension.
//! Their names and what they give are known to the checker too ([`super::check`]).

use std::sync::Arc;

use cel::{Context, Env, ExecutionError, Value};

use super::Reading;
use crate::normalize::map::parse_seconds;
use crate::normalize::time::{TimeFormat, TimeParser};

/// The root context: CEL's standard library, the string extension and the helpers, bound to
/// a source's [`Reading`]. Made once per expression; each row gets a child scope.
pub(super) struct Root(pub(super) Context<'static, 'static>);

pub(super) fn env() -> Arc<Env> {
    static ENV: std::sync::OnceLock<Arc<Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        env.add_extension(cel::extensions::strings)
            .expect("the string extension loads");
        Arc::new(env)
    })
    .clone()
}

pub(super) fn root(reading: &Reading) -> Root {
    let mut ctx = Context::with_env(env());
    let millis = reading.millis;
    let add = |r: Result<(), cel::DeclarationError>| r.expect("helper names are free");
    add(ctx.add_function("seconds", move |v: Value| {
        seconds_of(&v, millis).map_err(|e| ExecutionError::function_error("seconds", e))
    }));
    add(ctx.add_function("span", move |v: Value| {
        let secs = seconds_of(&v, millis).map_err(|e| ExecutionError::function_error("span", e))?;
        Ok::<_, ExecutionError>(Value::Duration(chrono::Duration::milliseconds(
            (secs * 1000.0).round() as i64,
        )))
    }));
    let time = reading.time.clone();
    add(ctx.add_function(
        "local",
        move |cel::extractors::Arguments(args): cel::extractors::Arguments| {
            let text = |v: Option<&Value>| match v {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(ExecutionError::function_error(
                    "local",
                    format!("takes text, and was given {}", kind_of(other)),
                )),
                None => Err(ExecutionError::function_error(
                    "local",
                    "takes the time as text",
                )),
            };
            let raw = text(args.first())?;
            let parsed = match args.get(1) {
                None => time.parse(&raw),
                Some(_) => {
                    let pattern = text(args.get(1))?;
                    TimeFormat::parse(&pattern)
                        .and_then(|f| TimeParser::new(f, time.zone().clone()).parse(&raw))
                }
            };
            parsed
                .map(to_cel)
                .map_err(|e| ExecutionError::function_error("local", e))
        },
    ));
    add(ctx.add_function(
        "endAfter",
        |start: chrono::DateTime<chrono::FixedOffset>,
         end: chrono::DateTime<chrono::FixedOffset>| {
            let mut end = end;
            let mut days = 0;
            while end < start && days < 2 {
                end += chrono::Duration::days(1);
                days += 1;
            }
            Value::Timestamp(end)
        },
    ));
    Root(ctx)
}

fn to_cel(t: jiff::Timestamp) -> Value {
    let utc = chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond() as u32)
        .unwrap_or_default();
    Value::Timestamp(utc.fixed_offset())
}

fn seconds_of(v: &Value, millis: bool) -> Result<f64, String> {
    match v {
        Value::Int(n) => Ok(*n as f64),
        Value::UInt(n) => Ok(*n as f64),
        Value::Float(n) => Ok(*n),
        Value::Duration(d) => Ok(d.num_milliseconds() as f64 / 1000.0),
        Value::String(s) => seconds_text(s, millis),
        other => Err(format!("{} is not a duration", kind_of(other))),
    }
}

/// `seconds()` of text: `124`, `124,6`, `h:mm:ss`, `mm:ss`.
pub(super) fn seconds_text(s: &str, millis: bool) -> Result<f64, String> {
    let s = s.trim();
    let secs = parse_seconds(s)?;
    Ok(if millis && !s.contains(':') {
        secs / 1000.0
    } else {
        secs
    })
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Int(_) | Value::UInt(_) => "a whole number",
        Value::Float(_) => "a number",
        Value::String(_) => "text",
        Value::Bytes(_) => "bytes",
        Value::Bool(_) => "true/false",
        Value::Duration(_) => "a duration",
        Value::Timestamp(_) => "a time",
        Value::Null => "null",
        _ => "a value",
    }
}
