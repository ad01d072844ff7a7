//! Whether a content `key` can be proposed for a sample: only a column set whose values are
//! unique over the **whole** sample (every row, not the first thousand), since a key too
//! narrow for the data merges distinct calls into one record without a word.
//!
//! Rows are compared by hashes (64 bits of the key's values, 64 of the whole row), so memory
//! grows with the rows, not with their width, and the rows checked are bounded
//! ([`MAX_ROWS`]). Two rows with the same key and the same content are one row exported twice
//! (what a key is for); the same key with other content is a conflict, and a set with one
//! conflict is not proposed.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};
use std::path::Path;

use anyhow::Context as _;

use crate::encoding::Charset;
use crate::sources::parse;

/// The most bytes of a sample read to check keys.
pub const MAX_BYTES: u64 = 256 << 20;
/// The most rows whose keys are checked.
pub const MAX_ROWS: usize = 4_000_000;

/// How a sample's rows are laid out, as `init` guessed it.
pub enum Layout {
    /// CSV/TSV: the delimiter, whether the first row is a header.
    Delimited {
        delimiter: u8,
        header: bool,
    },
    Ndjson,
}

/// What the whole sample says of one column set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub columns: Vec<String>,
    /// Rows whose key was another row's, with other content.
    pub conflicts: usize,
    /// Rows where one of the columns is empty or missing.
    pub empty: usize,
    /// Rows with the key and the content of an earlier row (exported twice).
    pub repeats: usize,
    /// An example of a conflicting key's values, for the comment.
    pub example: Option<String>,
}

impl Verdict {
    pub fn holds(&self) -> bool {
        self.conflicts == 0 && self.empty == 0
    }
}

/// What reading the whole sample found.
#[derive(Debug)]
pub struct Checked {
    pub rows: usize,
    pub verdicts: Vec<Verdict>,
}

/// Why no key could be checked.
#[derive(Debug, thiserror::Error)]
pub enum Unchecked {
    #[error("the sample is larger than {} MiB", MAX_BYTES >> 20)]
    TooLarge,
    #[error("the sample has more than {MAX_ROWS} rows")]
    TooManyRows,
    #[error("{0}")]
    Read(#[from] anyhow::Error),
}

fn hash<T: Hash + ?Sized>(v: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Checks each candidate column set (names as the map uses them) over every row of `path`.
/// `names` are the columns by position (CSV), ignored for NDJSON.
pub fn check(
    path: &Path,
    layout: &Layout,
    names: &[String],
    candidates: &[Vec<String>],
) -> Result<Checked, Unchecked> {
    use std::io::Read as _;
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read the sample {}", path.display()))?
        .len();
    if len > MAX_BYTES {
        return Err(Unchecked::TooLarge);
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::fs::File::open(path)
        .with_context(|| format!("cannot read the sample {}", path.display()))?
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the sample {}", path.display()))?;
    let (_, text) = super::sample::decode(&bytes);
    drop(bytes);
    let mut tally: Vec<(Verdict, HashMap<u64, u64>)> = candidates
        .iter()
        .map(|c| {
            (
                Verdict {
                    columns: c.clone(),
                    conflicts: 0,
                    empty: 0,
                    repeats: 0,
                    example: None,
                },
                HashMap::new(),
            )
        })
        .collect();
    let mut rows = 0usize;
    let mut see = |values: &dyn Fn(&str) -> Option<String>, whole: u64| -> Result<(), Unchecked> {
        rows += 1;
        if rows > MAX_ROWS {
            return Err(Unchecked::TooManyRows);
        }
        for (verdict, seen) in &mut tally {
            let mut key = Vec::with_capacity(verdict.columns.len());
            for c in &verdict.columns {
                match values(c).filter(|v| !v.trim().is_empty()) {
                    Some(v) => key.push(v),
                    None => break,
                }
            }
            if key.len() < verdict.columns.len() {
                verdict.empty += 1;
                continue;
            }
            match seen.entry(hash(&key)) {
                Entry::Vacant(e) => {
                    e.insert(whole);
                }
                Entry::Occupied(e) if *e.get() == whole => verdict.repeats += 1,
                Entry::Occupied(_) => {
                    verdict.conflicts += 1;
                    verdict.example.get_or_insert_with(|| key.join(", "));
                }
            }
        }
        Ok(())
    };
    match layout {
        Layout::Ndjson => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let Ok(serde_json::Value::Object(o)) = serde_json::from_str(line) else {
                    continue;
                };
                let values = |c: &str| match o.get(c)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Null => None,
                    v => Some(v.to_string()),
                };
                see(&values, hash(line.trim()))?;
            }
        }
        Layout::Delimited { delimiter, header } => {
            let index: HashMap<&str, usize> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i))
                .collect();
            let mut rest = text.as_bytes();
            let mut first = true;
            while !rest.is_empty() {
                let (items, _) = parse::csv(rest, *delimiter, Charset::Utf8, true, 65_536);
                let Some(last) = items.last() else { break };
                let consumed = last.end;
                for item in &items {
                    if std::mem::take(&mut first) && *header {
                        continue;
                    }
                    let fields = &item.value.fields;
                    if fields.iter().all(|f| f.trim().is_empty()) {
                        continue;
                    }
                    let values = |c: &str| {
                        index
                            .get(c)
                            .and_then(|i| fields.get(*i))
                            .map(|v| v.to_owned())
                    };
                    see(&values, hash(fields))?;
                }
                if consumed == 0 {
                    break;
                }
                rest = &rest[consumed..];
            }
        }
    }
    Ok(Checked {
        rows,
        verdicts: tally.into_iter().map(|(v, _)| v).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_key_repeated_late_with_other_content_is_a_conflict_and_a_repeat_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.csv");
        // call_id restarts per line: unique in the first rows, not in the file.
        let mut text = String::from("call_id,line,start\n");
        for line in 1..=3 {
            for id in 1..=2000 {
                text.push_str(&format!("{id},{line},2024-05-0{line} 08:00:00\n"));
            }
        }
        // The same row exported twice is not a conflict.
        text.push_str("7,3,2024-05-03 08:00:00\n");
        std::fs::write(&path, text).unwrap();
        let checked = check(
            &path,
            &Layout::Delimited {
                delimiter: b',',
                header: true,
            },
            &names(&["call_id", "line", "start"]),
            &[names(&["call_id"]), names(&["call_id", "line"])],
        )
        .unwrap();
        assert_eq!(checked.rows, 6001);
        // Lines 2 and 3 repeat each id of line 1, and so does the row exported twice.
        assert_eq!(checked.verdicts[0].conflicts, 4001);
        assert!(!checked.verdicts[0].holds());
        assert!(checked.verdicts[1].holds());
        assert_eq!(checked.verdicts[1].repeats, 1);
    }

    #[test]
    fn an_empty_key_column_is_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.ndjson");
        std::fs::write(&path, "{\"id\":1}\n{\"id\":null}\n{\"id\":2}\n").unwrap();
        let checked = check(&path, &Layout::Ndjson, &[], &[names(&["id"])]).unwrap();
        assert_eq!(checked.verdicts[0].empty, 1);
        assert!(!checked.verdicts[0].holds());
    }
}
