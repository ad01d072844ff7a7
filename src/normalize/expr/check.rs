//! The type checker: an expression's types, worked out over CEL's AST when the configuration
//! loads (the `cel` crate checks types only while evaluating), so that a wrong expression is a
//! configuration problem naming the place inside it, never a row parked later.

use cel::Program;
use cel::common::ast::{Expr as Ast, IdedExpr, LiteralValue};

use super::Want;

/// Checks an expression's types and that its result can fill what it is for (`want`). Gives
/// the columns it reads and whether it reads `row`.
pub(super) fn check(
    program: &Program,
    source: &str,
    want: Want,
    columns: Option<&[String]>,
) -> Result<(Vec<String>, bool), String> {
    let mut checker = Checker {
        program,
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
    Ok((checker.used, checker.uses_row))
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
