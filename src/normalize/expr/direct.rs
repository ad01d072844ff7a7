//! The direct path: the shapes most maps are made of (a column compared with text, a few
//! `seconds()` added up, a column trimmed or upper-cased, a choice between two of these),
//! evaluated over the row's text without building CEL values, scopes or calls.
//!
//! It only ever answers for a row whose evaluation cannot fail: a missing column, text that
//! `seconds()` cannot read, anything outside these shapes gives `None`, and the expression is
//! evaluated by the CEL interpreter instead, which words the error. So the direct path gives
//! the interpreter's value or nothing; `the_direct_path_agrees_with_the_interpreter` holds it.

use std::borrow::Cow;

use cel::common::ast::{Expr as Ast, IdedExpr, LiteralValue, operators as op};

use super::super::map::Row;
use super::Out;
use super::functions::seconds_text;

/// A compiled shape.
#[derive(Clone, Debug)]
pub(super) enum Direct {
    /// A column's text (an identifier or `row["name"]`).
    Column(String),
    /// Text written in the expression.
    Text(String),
    /// `a == b` (`negate`: `a != b`) between two texts.
    Equals(Box<Direct>, Box<Direct>, bool),
    /// `a in ['x', 'y']`.
    In(Box<Direct>, Vec<String>),
    And(Box<Direct>, Box<Direct>),
    Or(Box<Direct>, Box<Direct>),
    Not(Box<Direct>),
    /// `c ? a : b`.
    Choose(Box<Direct>, Box<Direct>, Box<Direct>),
    /// `seconds(text)`.
    Seconds(Box<Direct>),
    /// A sum of numbers (`seconds(a) + seconds(b)`).
    Sum(Box<Direct>, Box<Direct>),
    Trim(Box<Direct>),
    Upper(Box<Direct>),
    Lower(Box<Direct>),
}

/// A value on the direct path.
enum Val<'r> {
    Text(Cow<'r, str>),
    Bool(bool),
    Number(f64),
}

/// What a shape gives, known when it is compiled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Bool,
    Number,
}

impl Direct {
    /// The direct form of `node`, when it is one of the shapes.
    pub(super) fn compile(node: &IdedExpr) -> Option<Direct> {
        Self::shape(node).map(|(d, _)| d)
    }

    fn shape(node: &IdedExpr) -> Option<(Direct, Kind)> {
        let boxed = |n: &IdedExpr, want: Kind| {
            Self::shape(n).and_then(|(d, k)| (k == want).then(|| Box::new(d)))
        };
        match &node.expr {
            Ast::Ident(name) if name != "row" => Some((Direct::Column(name.clone()), Kind::Text)),
            Ast::Literal(LiteralValue::String(s)) => {
                Some((Direct::Text(s.inner().to_string()), Kind::Text))
            }
            Ast::Call(call) => {
                let name = call.func_name.as_str();
                let args = call.args.as_slice();
                match (name, call.target.as_deref(), args) {
                    (op::INDEX, None, [target, key]) if matches!(target.expr, Ast::Ident(ref n) if n == "row") =>
                    {
                        let Ast::Literal(LiteralValue::String(column)) = &key.expr else {
                            return None;
                        };
                        Some((Direct::Column(column.inner().to_string()), Kind::Text))
                    }
                    (op::EQUALS | op::NOT_EQUALS, None, [a, b]) => Some((
                        Direct::Equals(
                            boxed(a, Kind::Text)?,
                            boxed(b, Kind::Text)?,
                            name == op::NOT_EQUALS,
                        ),
                        Kind::Bool,
                    )),
                    (op::IN, None, [a, list]) => {
                        let Ast::List(list) = &list.expr else {
                            return None;
                        };
                        let texts = list
                            .elements
                            .iter()
                            .map(|e| match &e.expr {
                                Ast::Literal(LiteralValue::String(s)) => {
                                    Some(s.inner().to_string())
                                }
                                _ => None,
                            })
                            .collect::<Option<Vec<_>>>()?;
                        Some((Direct::In(boxed(a, Kind::Text)?, texts), Kind::Bool))
                    }
                    (op::LOGICAL_AND, None, [a, b]) => Some((
                        Direct::And(boxed(a, Kind::Bool)?, boxed(b, Kind::Bool)?),
                        Kind::Bool,
                    )),
                    (op::LOGICAL_OR, None, [a, b]) => Some((
                        Direct::Or(boxed(a, Kind::Bool)?, boxed(b, Kind::Bool)?),
                        Kind::Bool,
                    )),
                    (op::LOGICAL_NOT, None, [a]) => {
                        Some((Direct::Not(boxed(a, Kind::Bool)?), Kind::Bool))
                    }
                    (op::CONDITIONAL, None, [c, a, b]) => {
                        let (a, kind) = Self::shape(a)?;
                        let (b, other) = Self::shape(b)?;
                        (kind == other).then(|| {
                            let c = boxed(c, Kind::Bool)?;
                            Some((Direct::Choose(c, Box::new(a), Box::new(b)), kind))
                        })?
                    }
                    (op::ADD, None, [a, b]) => Some((
                        Direct::Sum(boxed(a, Kind::Number)?, boxed(b, Kind::Number)?),
                        Kind::Number,
                    )),
                    ("seconds", None, [a]) => {
                        Some((Direct::Seconds(boxed(a, Kind::Text)?), Kind::Number))
                    }
                    ("trim", Some(t), []) => {
                        Some((Direct::Trim(boxed(t, Kind::Text)?), Kind::Text))
                    }
                    ("upperAscii", Some(t), []) => {
                        Some((Direct::Upper(boxed(t, Kind::Text)?), Kind::Text))
                    }
                    ("lowerAscii", Some(t), []) => {
                        Some((Direct::Lower(boxed(t, Kind::Text)?), Kind::Text))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The value for `row`, or `None` where the interpreter must answer.
    pub(super) fn eval(&self, row: &dyn Row, millis: bool) -> Option<Out> {
        Some(match self.value(row, millis)? {
            Val::Text(t) => Out::Text(t.into_owned()),
            Val::Bool(b) => Out::Bool(b),
            Val::Number(n) => Out::Number(n),
        })
    }

    fn value<'r>(&self, row: &'r dyn Row, millis: bool) -> Option<Val<'r>> {
        let text = |d: &Direct| match d.value(row, millis)? {
            Val::Text(t) => Some(t),
            _ => None,
        };
        let truth = |d: &Direct| match d.value(row, millis)? {
            Val::Bool(b) => Some(b),
            _ => None,
        };
        let number = |d: &Direct| match d.value(row, millis)? {
            Val::Number(n) => Some(n),
            _ => None,
        };
        Some(match self {
            Direct::Column(c) => Val::Text(row.get(c)?),
            Direct::Text(t) => Val::Text(Cow::Owned(t.clone())),
            Direct::Equals(a, b, negate) => Val::Bool((text(a)? == text(b)?) != *negate),
            Direct::In(a, list) => {
                let a = text(a)?;
                Val::Bool(list.iter().any(|t| *t == a))
            }
            // Both sides are read: CEL's `&&` and `||` absorb an error on either side, which
            // only the interpreter can tell.
            Direct::And(a, b) => Val::Bool(truth(a)? & truth(b)?),
            Direct::Or(a, b) => Val::Bool(truth(a)? | truth(b)?),
            Direct::Not(a) => Val::Bool(!truth(a)?),
            Direct::Choose(c, a, b) => {
                if truth(c)? {
                    a.value(row, millis)?
                } else {
                    b.value(row, millis)?
                }
            }
            Direct::Seconds(a) => Val::Number(seconds_text(&text(a)?, millis).ok()?),
            Direct::Sum(a, b) => Val::Number(number(a)? + number(b)?),
            Direct::Trim(a) => Val::Text(match text(a)? {
                Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
                Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
            }),
            Direct::Upper(a) => Val::Text(Cow::Owned(text(a)?.to_ascii_uppercase())),
            Direct::Lower(a) => Val::Text(Cow::Owned(text(a)?.to_ascii_lowercase())),
        })
    }
}
