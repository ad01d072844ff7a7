//! `{ expr = "..." }` in `[source.map]`, `key` and `skip_if`: the Common Expression Language
//! over a row's columns.
//!
//! CEL is typed, side-effect free and always terminates, which is why a map takes it over a
//! scripting language. Columns are variables when their names are identifiers, and every column
//! is `row["any name"]`; their values are text. Besides CEL's standard functions and its string
//! extension (`trim()`, `upperAscii()`, `split()` ...), the helpers read what a map reads:
//!
//! * `seconds(x)`: seconds from `124.6`, `124,6`, `h:mm:ss` or `mm:ss` (plain numbers are
//!   milliseconds with `duration_unit = "ms"`), or from a number;
//! * `span(x)`: the same as a CEL duration, to add to a time;
//! * `local(text)` / `local(text, format)`: a time read in the source's `timezone`, with its
//!   `timestamp_format` or the strftime pattern given;
//! * `endAfter(start, end)`: `end`, a day later for as long as it lies before `start` (an end
//!   time of day that crosses midnight).
//!
//! An expression is compiled once, when the configuration is loaded, and checked for types
//! there: a syntax error, a function that does not exist, text compared with a number or a
//! result that cannot fill the field is a configuration problem naming the column inside the
//! expression. An error while evaluating a row parks that row with the reason.

mod direct;

use std::borrow::Cow;
use std::sync::Arc;

use cel::common::ast::{Expr as Ast, IdedExpr, LiteralValue};
use cel::common::types::CelString;
use cel::common::value::CowVal;
use cel::{Context, Env, ExecutionError, Program, Value};

use super::map::{Row, parse_seconds};
use super::time::{TimeFormat, TimeParser};
use direct::Direct;

/// What reading a source's values needs: its time zone and format, and the duration unit.
#[derive(Clone, Debug)]
pub struct Reading {
    pub time: TimeParser,
    /// Plain numbers given to `seconds()` and `span()` are milliseconds.
    pub millis: bool,
}

/// What an expression must give, checked when it is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// true or false, or text read as such (`offered`, `handled`).
    Bool,
    /// true or false only (`skip_if`).
    Condition,
    /// seconds: a number or a duration (`duration`).
    Seconds,
    /// a time (`timestamp`, `startTime`, `endTime`), or text read as one.
    Time,
    /// text or a whole number (names, identifiers, `key`, a `values` lookup).
    Text,
    /// a whole number of contacts (`expand = "interval"`).
    Count,
}

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    source: String,
    program: Arc<Program>,
    /// The columns it reads, by variable or as `row["..."]`.
    columns: Vec<String>,
    /// Whether it reads `row`.
    uses_row: bool,
    context: Arc<Root>,
    /// The direct form, for the common shapes ([`direct`]).
    direct: Option<Direct>,
    /// Plain numbers given to `seconds()` are milliseconds.
    millis: bool,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// The root context: CEL's standard library, the string extension and the helpers, bound to
/// a source's [`Reading`]. Made once per expression; each row gets a child scope.
struct Root(Context<'static, 'static>);

fn env() -> Arc<Env> {
    static ENV: std::sync::OnceLock<Arc<Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        env.add_extension(cel::extensions::strings)
            .expect("the string extension loads");
        Arc::new(env)
    })
    .clone()
}

fn root(reading: &Reading) -> Root {
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
fn seconds_text(s: &str, millis: bool) -> Result<f64, String> {
    let s = s.trim();
    let secs = parse_seconds(s)?;
    Ok(if millis && !s.contains(':') {
        secs / 1000.0
    } else {
        secs
    })
}

fn kind_of(v: &Value) -> &'static str {
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

/// What an expression gave for a row.
#[derive(Debug, PartialEq)]
pub enum Out {
    Bool(bool),
    Number(f64),
    Int(i64),
    Text(String),
    Time(jiff::Timestamp),
    Seconds(f64),
}

impl Expr {
    /// Compiles and checks `source`. `columns`, when the source knows them (a `columns` list),
    /// are the only variables it may name. The error says where inside the expression.
    pub fn compile(
        source: &str,
        want: Want,
        reading: &Reading,
        columns: Option<&[String]>,
    ) -> Result<Self, String> {
        let program = env().compile(source).map_err(|e| {
            let first = e.errors.first();
            let (line, col) = first.map(|e| e.pos).unwrap_or((1, 0));
            let msg = first
                .map(|e| e.msg.clone())
                .unwrap_or_else(|| e.to_string());
            // ANTLR lists every token it could take: say what is wrong instead.
            let msg = if msg.contains("'<EOF>'") {
                "it ends where more is expected".to_owned()
            } else {
                match msg.find(" expecting ") {
                    Some(cut) => msg[..cut].replace("Syntax error: ", ""),
                    None => msg.replace("Syntax error: ", ""),
                }
            };
            let at = if source.contains('\n') {
                format!("line {line}, column {}", col + 1)
            } else {
                format!("column {}", col + 1)
            };
            format!("expression {source:?} does not parse at {at}: {msg}")
        })?;
        let mut checker = Checker {
            program: &program,
            source,
            columns,
            scope: Vec::new(),
            used: Vec::new(),
            uses_row: false,
        };
        let ty = checker.check(program.expression())?;
        let fits = match want {
            Want::Bool => matches!(ty, Ty::Bool | Ty::Dyn | Ty::String),
            Want::Condition => matches!(ty, Ty::Bool | Ty::Dyn),
            Want::Seconds => matches!(
                ty,
                Ty::Int | Ty::Uint | Ty::Double | Ty::Duration | Ty::String | Ty::Dyn
            ),
            Want::Time => matches!(ty, Ty::Timestamp | Ty::String | Ty::Dyn),
            Want::Text => matches!(ty, Ty::String | Ty::Int | Ty::Uint | Ty::Dyn),
            Want::Count => matches!(ty, Ty::Int | Ty::Uint | Ty::String | Ty::Dyn),
        };
        if !fits {
            let wanted = match want {
                Want::Bool | Want::Condition => "true or false",
                Want::Seconds => "seconds (a number, or a duration such as span(talk))",
                Want::Time => "a time (such as local(date + ' ' + time))",
                Want::Text => "text",
                Want::Count => "a whole number",
            };
            return Err(format!(
                "expression {source:?} gives {}, and this needs {wanted}",
                ty.words()
            ));
        }
        let (columns, uses_row) = (checker.used, checker.uses_row);
        let direct = Direct::compile(program.expression());
        Ok(Self {
            source: source.to_owned(),
            program: Arc::new(program),
            columns,
            uses_row,
            context: Arc::new(root(reading)),
            direct,
            millis: reading.millis,
        })
    }

    /// The columns it reads (for telling whether a column that cannot be read matters).
    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(String::as_str)
    }

    /// Evaluates it for a row.
    pub fn eval(&self, row: &dyn Row) -> Result<Out, String> {
        if let Some(out) = self.direct.as_ref().and_then(|d| d.eval(row, self.millis)) {
            return Ok(out);
        }
        self.interpret(row)
    }

    /// Evaluates it with the CEL interpreter.
    fn interpret(&self, row: &dyn Row) -> Result<Out, String> {
        let mut values: Vec<Option<Cow<'_, str>>> = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            values.push(row.get(c));
        }
        let bound = Bound {
            names: &self.columns,
            values: &values,
            row: self.uses_row,
        };
        let mut scope = self.context.0.new_inner_scope();
        scope.set_variable_resolver(&bound);
        let value = self.program.execute(&scope).map_err(|e| {
            // A column the row lacks is named as such.
            if let ExecutionError::UndeclaredReference(name) = &e {
                return format!("the column `{name}` is missing from this row");
            }
            if let ExecutionError::NoSuchKey(name) = &e {
                return format!("the column `{name}` is missing from this row");
            }
            format!("expression {:?}: {e}", self.source)
        })?;
        Ok(match value {
            Value::Bool(b) => Out::Bool(b),
            Value::Int(n) => Out::Int(n),
            Value::UInt(n) => Out::Int(n.min(i64::MAX as u64) as i64),
            Value::Float(n) => Out::Number(n),
            Value::String(s) => Out::Text(s.as_str().to_owned()),
            Value::Duration(d) => Out::Seconds(d.num_milliseconds() as f64 / 1000.0),
            Value::Timestamp(t) => Out::Time(
                jiff::Timestamp::from_millisecond(t.timestamp_millis())
                    .map_err(|e| format!("expression {:?}: {e}", self.source))?,
            ),
            other => {
                return Err(format!(
                    "expression {:?} gave {}",
                    self.source,
                    kind_of(&other)
                ));
            }
        })
    }
}

/// A row's columns as the expression's variables, looked up only when it reads them.
struct Bound<'a> {
    names: &'a [String],
    values: &'a [Option<Cow<'a, str>>],
    row: bool,
}

impl cel::context::VariableResolver for Bound<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        if variable == "row" && self.row {
            let map: std::collections::HashMap<String, String> = self
                .names
                .iter()
                .zip(self.values)
                .filter_map(|(n, v)| Some((n.clone(), v.as_ref()?.to_string())))
                .collect();
            return Value::from(map).try_into().ok().map(CowVal::Owned);
        }
        let i = self.names.iter().position(|n| n == variable)?;
        let value = self.values[i].as_deref()?;
        Some(CowVal::owned(CelString::from(value)))
    }
}

/// The types the checker tells apart; `Dyn` is what it cannot know (a list's element, a
/// macro's result) and fits anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    Null,
    List,
    Map,
    Dyn,
}

impl Ty {
    fn words(self) -> &'static str {
        match self {
            Ty::Bool => "true/false",
            Ty::Int | Ty::Uint => "a whole number",
            Ty::Double => "a number",
            Ty::String => "text",
            Ty::Bytes => "bytes",
            Ty::Duration => "a duration",
            Ty::Timestamp => "a time",
            Ty::Null => "null",
            Ty::List => "a list",
            Ty::Map => "a map",
            Ty::Dyn => "a value",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }
}

/// The helpers and the standard functions an expression may call, with what they give.
const GLOBALS: &[(&str, Ty)] = &[
    ("seconds", Ty::Double),
    ("span", Ty::Duration),
    ("local", Ty::Timestamp),
    ("endAfter", Ty::Timestamp),
    ("size", Ty::Int),
    ("int", Ty::Int),
    ("uint", Ty::Uint),
    ("double", Ty::Double),
    ("string", Ty::String),
    ("bool", Ty::Bool),
    ("duration", Ty::Duration),
    ("timestamp", Ty::Timestamp),
    ("matches", Ty::Bool),
    ("dyn", Ty::Dyn),
    ("max", Ty::Dyn),
    ("min", Ty::Dyn),
];

/// Functions called on a value (`x.trim()`), with what they give.
const MEMBERS: &[(&str, Ty)] = &[
    ("contains", Ty::Bool),
    ("startsWith", Ty::Bool),
    ("endsWith", Ty::Bool),
    ("matches", Ty::Bool),
    ("trim", Ty::String),
    ("upperAscii", Ty::String),
    ("lowerAscii", Ty::String),
    ("replace", Ty::String),
    ("substring", Ty::String),
    ("charAt", Ty::String),
    ("format", Ty::String),
    ("join", Ty::String),
    ("reverse", Ty::String),
    ("quote", Ty::String),
    ("split", Ty::List),
    ("indexOf", Ty::Int),
    ("lastIndexOf", Ty::Int),
    ("size", Ty::Int),
    ("getFullYear", Ty::Int),
    ("getMonth", Ty::Int),
    ("getDate", Ty::Int),
    ("getDayOfMonth", Ty::Int),
    ("getDayOfWeek", Ty::Int),
    ("getDayOfYear", Ty::Int),
    ("getHours", Ty::Int),
    ("getMinutes", Ty::Int),
    ("getSeconds", Ty::Int),
    ("getMilliseconds", Ty::Int),
];

struct Checker<'a> {
    program: &'a Program,
    source: &'a str,
    columns: Option<&'a [String]>,
    /// Variables a macro introduces (`x` in `list.exists(x, ...)`).
    scope: Vec<String>,
    used: Vec<String>,
    uses_row: bool,
}

impl Checker<'_> {
    /// A problem at a node: `expression "..." at column N (`text`): message`.
    fn error(&self, node: &IdedExpr, message: impl std::fmt::Display) -> String {
        let at = self
            .program
            .source_info()
            .offset_for(node.id)
            .map(|(start, stop)| {
                let (mut start, stop) = (start as usize, (stop as usize).max(start as usize));
                let mut text = self
                    .source
                    .get(start..=stop.min(self.source.len().saturating_sub(1)))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                // A call is placed at its `(`: name the function instead.
                if let Ast::Call(call) = &node.expr
                    && call
                        .func_name
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_')
                    && self
                        .source
                        .get(..start)
                        .is_some_and(|s| s.ends_with(&call.func_name))
                {
                    start -= call.func_name.len();
                    text = format!("{}()", call.func_name);
                }
                let col = self.source.get(..start).map_or(0, |s| s.chars().count()) + 1;
                format!(" at column {col} (`{text}`)")
            })
            .unwrap_or_default();
        format!("expression {:?}{at}: {message}", self.source)
    }

    fn check(&mut self, node: &IdedExpr) -> Result<Ty, String> {
        match &node.expr {
            Ast::Literal(l) => Ok(match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            }),
            Ast::Ident(name) => {
                if self.scope.iter().any(|s| s == name) {
                    return Ok(Ty::Dyn);
                }
                if name == "row" {
                    self.uses_row = true;
                    return Ok(Ty::Map);
                }
                if let Some(known) = self.columns
                    && !known.iter().any(|c| c == name)
                {
                    return Err(self.error(
                        node,
                        format!(
                            "there is no column `{name}` (columns: {})",
                            known.join(", ")
                        ),
                    ));
                }
                if !self.used.contains(name) {
                    self.used.push(name.clone());
                }
                Ok(Ty::String)
            }
            Ast::List(list) => {
                for e in &list.elements {
                    self.check(e)?;
                }
                Ok(Ty::List)
            }
            Ast::Map(map) => {
                for entry in &map.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(e) = &entry.expr {
                        self.check(&e.key)?;
                        self.check(&e.value)?;
                    }
                }
                Ok(Ty::Map)
            }
            Ast::Select(select) => {
                let operand = self.check(&select.operand)?;
                if select.test {
                    return Ok(Ty::Bool);
                }
                match operand {
                    Ty::Map => Ok(Ty::String),
                    Ty::Dyn => Ok(Ty::Dyn),
                    other => Err(self.error(
                        node,
                        format!("{} has no field `{}`", other.words(), select.field),
                    )),
                }
            }
            Ast::Comprehension(c) => {
                self.check(&c.iter_range)?;
                self.scope.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.scope.push(v.clone());
                }
                self.scope.push(c.accu_var.clone());
                for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    self.check(part)?;
                }
                self.scope
                    .truncate(self.scope.len() - 2 - usize::from(c.iter_var2.is_some()));
                Ok(Ty::Dyn)
            }
            Ast::Call(call) => self.call(node, call),
            Ast::Struct(_) | Ast::Unspecified => {
                Err(self.error(node, "message types are not available here"))
            }
        }
    }

    fn call(&mut self, node: &IdedExpr, call: &cel::common::ast::CallExpr) -> Result<Ty, String> {
        use cel::common::ast::operators as op;
        let name = call.func_name.as_str();
        // `row["name"]`: a column by any name.
        if name == op::INDEX
            && let [target, key] = call.args.as_slice()
            && matches!(target.expr, Ast::Ident(ref n) if n == "row")
            && !self.scope.iter().any(|s| s == "row")
        {
            let Ast::Literal(LiteralValue::String(column)) = &key.expr else {
                return Err(self.error(key, "write the column's name in quotes: row[\"name\"]"));
            };
            let column = column.inner().to_string();
            if let Some(known) = self.columns
                && !known.contains(&column)
            {
                return Err(self.error(
                    node,
                    format!(
                        "there is no column {column:?} (columns: {})",
                        known.join(", ")
                    ),
                ));
            }
            if !self.used.contains(&column) {
                self.used.push(column);
            }
            self.uses_row = true;
            return Ok(Ty::String);
        }
        let target = match &call.target {
            Some(t) => Some(self.check(t)?),
            None => None,
        };
        let mut args = Vec::with_capacity(call.args.len());
        for a in &call.args {
            args.push(self.check(a)?);
        }
        let arg = |i: usize| args.get(i).copied().unwrap_or(Ty::Dyn);
        let dyn_in = |tys: &[Ty]| tys.contains(&Ty::Dyn);
        match name {
            op::LOGICAL_AND | op::LOGICAL_OR | op::LOGICAL_NOT | op::NOT_STRICTLY_FALSE => {
                for (i, t) in args.iter().enumerate() {
                    if !matches!(t, Ty::Bool | Ty::Dyn) {
                        let hint = if *t == Ty::String {
                            ": compare it, e.g. x == 'yes'"
                        } else {
                            ""
                        };
                        return Err(self.error(
                            &call.args[i],
                            format!("needs true or false, and this is {}{hint}", t.words()),
                        ));
                    }
                }
                Ok(Ty::Bool)
            }
            op::EQUALS | op::NOT_EQUALS => {
                let (a, b) = (arg(0), arg(1));
                if !dyn_in(&[a, b])
                    && a != b
                    && !(a.numeric() && b.numeric())
                    && a != Ty::Null
                    && b != Ty::Null
                {
                    let hint =
                        if (a == Ty::String && b.numeric()) || (b == Ty::String && a.numeric()) {
                            ": columns are text; compare with '0', or read a number with int(x), \
                         double(x) or seconds(x)"
                        } else {
                            ""
                        };
                    return Err(self.error(
                        node,
                        format!("compares {} with {}{hint}", a.words(), b.words()),
                    ));
                }
                Ok(Ty::Bool)
            }
            op::LESS | op::LESS_EQUALS | op::GREATER | op::GREATER_EQUALS => {
                let (a, b) = (arg(0), arg(1));
                if !dyn_in(&[a, b]) && a != b && !(a.numeric() && b.numeric()) {
                    return Err(
                        self.error(node, format!("compares {} with {}", a.words(), b.words()))
                    );
                }
                Ok(Ty::Bool)
            }
            op::ADD | op::SUBSTRACT | op::MULTIPLY | op::DIVIDE | op::MODULO | op::NEGATE => {
                self.arithmetic(node, name, &args)
            }
            op::CONDITIONAL => {
                let (c, a, b) = (arg(0), arg(1), arg(2));
                if !matches!(c, Ty::Bool | Ty::Dyn) {
                    return Err(self.error(
                        &call.args[0],
                        format!("the condition is {}, not true or false", c.words()),
                    ));
                }
                if a == b || b == Ty::Dyn || b == Ty::Null {
                    Ok(a)
                } else if a == Ty::Dyn || a == Ty::Null {
                    Ok(b)
                } else if a.numeric() && b.numeric() {
                    Ok(Ty::Dyn)
                } else {
                    Err(self.error(
                        node,
                        format!("one branch gives {} and the other {}", a.words(), b.words()),
                    ))
                }
            }
            op::INDEX | op::OPT_INDEX => match arg(0) {
                Ty::List | Ty::Dyn => Ok(Ty::Dyn),
                Ty::Map => Ok(Ty::Dyn),
                other => Err(self.error(node, format!("{} cannot be indexed", other.words()))),
            },
            op::IN => match arg(1) {
                Ty::List | Ty::Map | Ty::Dyn => Ok(Ty::Bool),
                other => Err(self.error(
                    &call.args[1],
                    format!(
                        "`in` needs a list such as ['A', 'B'], and this is {}",
                        other.words()
                    ),
                )),
            },
            _ => {
                if let Some(t) = target {
                    let Some((_, ty)) = MEMBERS.iter().find(|(n, _)| *n == name) else {
                        return Err(self.error(
                            node,
                            format!("`{name}()` is not a function of {}", t.words()),
                        ));
                    };
                    if t != Ty::Dyn && !member_applies(name, t) {
                        return Err(
                            self.error(node, format!("`{name}()` does not apply to {}", t.words()))
                        );
                    }
                    return Ok(*ty);
                }
                let Some((_, ty)) = GLOBALS.iter().find(|(n, _)| *n == name) else {
                    let mut known: Vec<&str> = GLOBALS[..4].iter().map(|(n, _)| *n).collect();
                    known.extend(["int", "double", "string", "size", "timestamp", "duration"]);
                    return Err(self.error(
                        node,
                        format!(
                            "there is no function `{name}` (the helpers: {}; and CEL's own)",
                            known.join(", ")
                        ),
                    ));
                };
                self.arguments(node, name, &args)?;
                Ok(*ty)
            }
        }
    }

    /// The helpers' arguments.
    fn arguments(&self, node: &IdedExpr, name: &str, args: &[Ty]) -> Result<(), String> {
        let count = |range: std::ops::RangeInclusive<usize>| {
            if range.contains(&args.len()) {
                Ok(())
            } else {
                Err(self.error(
                    node,
                    format!(
                        "`{name}` takes {} argument(s), not {}",
                        if range.start() == range.end() {
                            range.start().to_string()
                        } else {
                            format!("{} or {}", range.start(), range.end())
                        },
                        args.len()
                    ),
                ))
            }
        };
        let each = |ok: &dyn Fn(Ty) -> bool, what: &str| match args
            .iter()
            .find(|t| **t != Ty::Dyn && !ok(**t))
        {
            Some(t) => Err(self.error(
                node,
                format!("`{name}` takes {what}, and was given {}", t.words()),
            )),
            None => Ok(()),
        };
        match name {
            "seconds" | "span" => {
                count(1..=1)?;
                each(
                    &|t| t == Ty::String || t.numeric() || t == Ty::Duration,
                    "text or a number",
                )
            }
            "local" => {
                count(1..=2)?;
                each(&|t| t == Ty::String, "text")
            }
            "endAfter" => {
                count(2..=2)?;
                each(&|t| t == Ty::Timestamp, "two times")
            }
            _ => Ok(()),
        }
    }

    fn arithmetic(&self, node: &IdedExpr, name: &str, args: &[Ty]) -> Result<Ty, String> {
        use cel::common::ast::operators as op;
        if args.contains(&Ty::Dyn) {
            return Ok(Ty::Dyn);
        }
        let verb = match name {
            op::ADD => "add",
            op::SUBSTRACT | op::NEGATE => "subtract",
            op::MULTIPLY => "multiply",
            op::DIVIDE => "divide",
            _ => "take the remainder of",
        };
        if let [a] = args {
            return if a.numeric() || *a == Ty::Duration {
                Ok(*a)
            } else {
                Err(self.error(node, format!("cannot negate {}", a.words())))
            };
        }
        let (a, b) = (args[0], args[1]);
        let result = match (name, a, b) {
            (_, x, y) if x == y && x.numeric() => Some(x),
            (op::ADD, Ty::String, Ty::String) => Some(Ty::String),
            (op::ADD, Ty::List, Ty::List) => Some(Ty::List),
            (op::ADD, Ty::Timestamp, Ty::Duration) | (op::ADD, Ty::Duration, Ty::Timestamp) => {
                Some(Ty::Timestamp)
            }
            (op::ADD | op::SUBSTRACT, Ty::Duration, Ty::Duration) => Some(Ty::Duration),
            (op::SUBSTRACT, Ty::Timestamp, Ty::Duration) => Some(Ty::Timestamp),
            (op::SUBSTRACT, Ty::Timestamp, Ty::Timestamp) => Some(Ty::Duration),
            _ => None,
        };
        result.ok_or_else(|| {
            let hint = if a.numeric() && b.numeric() {
                ": whole numbers and numbers with a fraction do not mix; write 1.0, or double(x)"
            } else if a == Ty::String || b == Ty::String {
                ": columns are text; read numbers with int(x), double(x) or seconds(x)"
            } else {
                ""
            };
            self.error(
                node,
                format!("cannot {verb} {} and {}{hint}", a.words(), b.words()),
            )
        })
    }
}

fn member_applies(name: &str, on: Ty) -> bool {
    match name {
        "size" => matches!(on, Ty::String | Ty::List | Ty::Map | Ty::Bytes),
        "join" => on == Ty::List,
        n if n.starts_with("get") => matches!(on, Ty::Timestamp | Ty::Duration),
        _ => on == Ty::String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapRow(HashMap<&'static str, &'static str>);
    impl Row for MapRow {
        fn get(&self, column: &str) -> Option<Cow<'_, str>> {
            self.0.get(column).map(|v| Cow::Borrowed(*v))
        }
    }

    fn reading() -> Reading {
        Reading {
            time: TimeParser::new(
                TimeFormat::Pattern("%d.%m.%Y %H:%M:%S".into()),
                jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
            ),
            millis: false,
        }
    }

    fn eval(source: &str, want: Want, row: &[(&'static str, &'static str)]) -> Result<Out, String> {
        let e = Expr::compile(source, want, &reading(), None)?;
        e.eval(&MapRow(row.iter().copied().collect()))
    }

    fn problem(source: &str, want: Want) -> String {
        Expr::compile(source, want, &reading(), None).unwrap_err()
    }

    /// Every shape the direct path takes gives the interpreter's value on rows it answers
    /// for, and leaves rows it cannot answer for (a missing column, an unreadable duration) to
    /// the interpreter, whose error stays the one the operator sees.
    #[test]
    fn the_direct_path_agrees_with_the_interpreter() {
        let rows: [&[(&'static str, &'static str)]; 5] = [
            &[
                ("outcome", "AGENT"),
                ("talk", "0:02:04"),
                ("hold", "12,5"),
                ("acw", "30"),
                ("Queue Name", " sales "),
            ],
            &[
                ("outcome", "HANG"),
                ("talk", "7"),
                ("hold", "0"),
                ("acw", "1:05"),
                ("Queue Name", "Support"),
            ],
            &[
                ("outcome", "agent"),
                ("talk", "n/a"),
                ("hold", ""),
                ("acw", "3"),
                ("Queue Name", ""),
            ],
            &[("talk", "5"), ("hold", "5"), ("acw", "5")],
            &[
                ("outcome", "PHANTOM"),
                ("talk", " 12.5 "),
                ("hold", "1"),
                ("acw", "2"),
                ("Queue Name", "x"),
            ],
        ];
        let shapes = [
            ("outcome == 'AGENT'", Want::Bool),
            ("outcome != 'PHANTOM'", Want::Bool),
            ("row['Queue Name'].trim().upperAscii()", Want::Text),
            ("row['Queue Name'].lowerAscii()", Want::Text),
            (
                "seconds(talk) + seconds(hold) + seconds(acw)",
                Want::Seconds,
            ),
            (
                "outcome in ['AGENT', 'HANG'] && !(outcome == 'HANG')",
                Want::Condition,
            ),
            (
                "outcome == 'AGENT' || seconds(talk) + seconds(hold) + seconds(acw) == seconds('0')",
                Want::Bool,
            ),
            ("outcome == 'HANG' || talk == '7'", Want::Condition),
            (
                "outcome == 'AGENT' ? seconds(talk) : seconds(acw)",
                Want::Seconds,
            ),
            ("outcome", Want::Text),
        ];
        let mut answered = 0;
        for (source, want) in shapes {
            let e = Expr::compile(source, want, &reading(), None).unwrap();
            let direct = e.direct.as_ref();
            for row in rows {
                let row = MapRow(row.iter().copied().collect());
                let interpreted = e.interpret(&row);
                match direct.and_then(|d| d.eval(&row, false)) {
                    Some(out) => {
                        answered += 1;
                        assert_eq!(Ok(out), interpreted, "{source}");
                    }
                    None => assert_eq!(e.eval(&row), interpreted, "{source}"),
                }
            }
        }
        // Every shape but the comparison of seconds with `==` (numbers) is direct; most rows
        // have every column it reads.
        assert!(
            answered >= 30,
            "the direct path answered only {answered} times"
        );
        let not_direct = Expr::compile("size(outcome) > 3", Want::Bool, &reading(), None).unwrap();
        assert!(not_direct.direct.is_none());
    }

    #[test]
    fn handle_time_is_the_sum_of_its_parts_in_any_duration_form() {
        let row = [("talk", "0:02:04"), ("hold", "12,5"), ("acw", "30")];
        let out = eval(
            "seconds(talk) + seconds(hold) + seconds(acw)",
            Want::Seconds,
            &row,
        );
        assert_eq!(out, Ok(Out::Number(166.5)));
    }

    #[test]
    fn a_local_date_and_time_in_two_columns_become_one_instant() {
        let row = [("date", "06.12.2021"), ("time", "11:34:22")];
        let out = eval("local(date + ' ' + time)", Want::Time, &row).unwrap();
        assert_eq!(out, Out::Time("2021-12-06T10:34:22Z".parse().unwrap()));
        let out = eval("local(date, '%d.%m.%Y') + span('1:00')", Want::Time, &row).unwrap();
        assert_eq!(out, Out::Time("2021-12-05T23:01:00Z".parse().unwrap()));
    }

    #[test]
    fn an_end_time_of_day_before_the_start_is_on_the_next_day() {
        let row = [
            ("day", "31.12.2021"),
            ("from", "23:50:00"),
            ("to", "00:10:00"),
        ];
        let out = eval(
            "endAfter(local(day + ' ' + from), local(day + ' ' + to))",
            Want::Time,
            &row,
        );
        assert_eq!(out, Ok(Out::Time("2021-12-31T23:10:00Z".parse().unwrap())));
    }

    #[test]
    fn columns_by_any_name_trimmed_and_upper_cased() {
        let row = [("q time", " 5 "), ("outcome", " agent ")];
        assert_eq!(
            eval("row['q time'].trim() != '0'", Want::Bool, &row),
            Ok(Out::Bool(true))
        );
        assert_eq!(
            eval("outcome.trim().upperAscii()", Want::Text, &row),
            Ok(Out::Text("AGENT".into()))
        );
    }

    #[test]
    fn a_missing_column_and_a_bad_value_are_named() {
        let e = eval("seconds(talk)", Want::Seconds, &[]).unwrap_err();
        assert!(e.contains("`talk` is missing"), "{e}");
        let e = eval("seconds(talk)", Want::Seconds, &[("talk", "soon")]).unwrap_err();
        assert!(e.contains("\"soon\" is not a duration"), "{e}");
    }

    #[test]
    fn mistakes_are_found_when_the_configuration_is_loaded() {
        let e = problem("seconds(talk) +", Want::Seconds);
        assert!(
            e.contains("does not parse at column 17: it ends where more is expected"),
            "{e}"
        );
        let e = problem("talk.trimm()", Want::Text);
        assert!(
            e.contains("at column 6 (`trimm()`): `trimm()` is not a function of text"),
            "{e}"
        );
        let e = problem("secs(talk)", Want::Seconds);
        assert!(
            e.contains("at column 1 (`secs()`): there is no function `secs`"),
            "{e}"
        );
        let e = problem("q_time != 0", Want::Bool);
        assert!(e.contains("compares text with a whole number"), "{e}");
        assert!(e.contains("columns are text"), "{e}");
        let e = problem("seconds(talk) + 1", Want::Seconds);
        assert!(
            e.contains("at column 15 (`+`): cannot add a number and a whole number"),
            "{e}"
        );
        let e = problem("outcome == 'AGENT'", Want::Seconds);
        assert!(
            e.contains("gives true/false, and this needs seconds"),
            "{e}"
        );
        let e = problem("talk && hold", Want::Bool);
        assert!(e.contains("needs true or false, and this is text"), "{e}");
        let known = ["talk".to_owned()];
        let e =
            Expr::compile("seconds(tlak)", Want::Seconds, &reading(), Some(&known)).unwrap_err();
        assert!(
            e.contains("there is no column `tlak` (columns: talk)"),
            "{e}"
        );
    }
}
